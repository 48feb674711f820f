-- What auth-service adds: sessions, their refresh tokens (stored only as hashes), the public
-- keys that verify access tokens, and case-insensitive email uniqueness enforced by the database.

-- Emails are stored trimmed and lower-cased; this makes uniqueness hold for rows written by
-- anything else too (an admin script, an import).
CREATE UNIQUE INDEX uq_users_email_lower ON users (lower(email));

CREATE TABLE sessions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    revoked_at TIMESTAMP WITH TIME ZONE,
    revoked_reason TEXT,
    CONSTRAINT fk_sessions_user_id FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE,
    CONSTRAINT chk_sessions_revoked CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);

CREATE INDEX idx_sessions_user_id ON sessions(user_id);
-- Recent revocations are what verifiers need to load.
CREATE INDEX idx_sessions_revoked_at ON sessions(revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens (
    -- SHA-256 of the token; the token itself is never stored.
    token_hash BYTEA PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    session_id UUID NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    -- Set when the token is exchanged for a new pair; presenting it again after the grace
    -- window revokes the session.
    spent_at TIMESTAMP WITH TIME ZONE,
    CONSTRAINT fk_refresh_tokens_session_id FOREIGN KEY (session_id) REFERENCES sessions(id) ON DELETE CASCADE
);

CREATE INDEX idx_refresh_tokens_session_id ON refresh_tokens(session_id);

CREATE TABLE signing_keys (
    -- RFC 7638 thumbprint of the public key.
    kid TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL DEFAULT 'EdDSA' CHECK (algorithm = 'EdDSA'),
    -- Raw 32-byte Ed25519 public key.
    public_key BYTEA NOT NULL CHECK (octet_length(public_key) = 32),
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    -- From this moment the key no longer verifies (set once its last token has expired).
    retired_at TIMESTAMP WITH TIME ZONE
);
