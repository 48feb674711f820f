-- A session deleted (DeleteAccount's cascade, housekeeping, an operator's DELETE) is revoked too.
-- Verifiers hear of it by NOTIFY (trg_sessions_deleted), but a verifier that starts or reconnects
-- reloads its list from the database, where a deleted session has left no row: this table keeps
-- the ids of deleted sessions for as long as revoked ones are kept (housekeeping prunes both).

CREATE TABLE session_deletions (
    session_id UUID PRIMARY KEY,
    deleted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX idx_session_deletions_deleted_at ON session_deletions (deleted_at);

-- One statement-level trigger with a transition table: a bulk delete costs one INSERT.
CREATE FUNCTION record_session_deletions() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO session_deletions (session_id)
    SELECT id FROM deleted_sessions
    ON CONFLICT (session_id) DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER trg_sessions_deletions_recorded AFTER DELETE ON sessions
    REFERENCING OLD TABLE AS deleted_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION record_session_deletions();
