-- Verifiers (task-service) learn of revocations and key changes at once, whoever makes them:
-- triggers NOTIFY, and PostgreSQL delivers a notification when its transaction commits.

CREATE FUNCTION notify_session_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('session_revoked', OLD.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER trg_sessions_revoked AFTER UPDATE OF revoked_at ON sessions
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION notify_session_revoked();

-- Deleting an account deletes its sessions by cascade: they are revoked too.
CREATE TRIGGER trg_sessions_deleted AFTER DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION notify_session_revoked();

CREATE FUNCTION notify_signing_keys_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('signing_keys_changed', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER trg_signing_keys_changed AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION notify_signing_keys_changed();
