-- Failed password checks per account and per client address, in the database so that every
-- auth-service instance sees the same counts. One row per key and fixed window.
CREATE TABLE login_throttle (
    -- 'account:<email>' or 'address:<ip>'
    key TEXT PRIMARY KEY,
    window_start TIMESTAMP WITH TIME ZONE NOT NULL,
    failures INTEGER NOT NULL CHECK (failures > 0)
);

-- For pruning windows that have ended.
CREATE INDEX idx_login_throttle_window_start ON login_throttle(window_start);
