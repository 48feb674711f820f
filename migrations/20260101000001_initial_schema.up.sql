-- The schema of the original design document (database-schema.md), kept exactly:
-- both tables, every column and default, the foreign key, the CHECKs, the seven indexes,
-- and the triggers that keep updated_at current.

CREATE TABLE users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    email VARCHAR(255) UNIQUE NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
);

-- Index for email lookups (used for authentication)
CREATE INDEX idx_users_email ON users(email);

-- Index for creation date (used for user management)
CREATE INDEX idx_users_created_at ON users(created_at);

CREATE TABLE tasks (
    id SERIAL PRIMARY KEY,
    user_id UUID NOT NULL,
    title VARCHAR(255) NOT NULL,
    description TEXT,
    completed BOOLEAN DEFAULT FALSE NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),

    -- Foreign key constraint linking to users table
    CONSTRAINT fk_tasks_user_id FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE,
    -- Check constraints of the design document: title 1 to 255 characters, description at most 1000
    CONSTRAINT chk_tasks_title_length CHECK (char_length(title) BETWEEN 1 AND 255),
    CONSTRAINT chk_tasks_description_length CHECK (description IS NULL OR char_length(description) <= 1000)
);

-- Index for user_id (critical for user-specific queries)
CREATE INDEX idx_tasks_user_id ON tasks(user_id);

-- Index for completed status (used for filtering)
CREATE INDEX idx_tasks_completed ON tasks(completed);

-- Composite index for user_id and completed (used for user-specific filtering)
CREATE INDEX idx_tasks_user_completed ON tasks(user_id, completed);

-- Index for creation date (used for sorting and time-based queries)
CREATE INDEX idx_tasks_created_at ON tasks(created_at);

-- Index for updated date (used for sync and recent changes)
CREATE INDEX idx_tasks_updated_at ON tasks(updated_at);

-- Timestamps automatically managed by database triggers
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$;

CREATE TRIGGER trg_users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TRIGGER trg_tasks_updated_at BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
