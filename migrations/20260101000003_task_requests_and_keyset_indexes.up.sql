-- What task-service adds: idempotency keys for CreateTask, and indexes that make every page of
-- ListTasks cost what the first does (keyset pagination on (time, id) within one user).

CREATE TABLE task_create_requests (
    user_id UUID NOT NULL,
    request_id TEXT NOT NULL CHECK (char_length(request_id) BETWEEN 1 AND 128),
    task_id INTEGER NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
    PRIMARY KEY (user_id, request_id),
    CONSTRAINT fk_task_create_requests_user_id FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE,
    -- A deleted task frees its request id.
    CONSTRAINT fk_task_create_requests_task_id FOREIGN KEY (task_id) REFERENCES tasks(id) ON DELETE CASCADE
);

CREATE INDEX idx_task_create_requests_task_id ON task_create_requests(task_id);

CREATE INDEX idx_tasks_user_created_id ON tasks(user_id, created_at, id);
CREATE INDEX idx_tasks_user_updated_id ON tasks(user_id, updated_at, id);
