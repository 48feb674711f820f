DROP TRIGGER trg_signing_keys_changed ON signing_keys;
DROP FUNCTION notify_signing_keys_changed();
DROP TRIGGER trg_sessions_deleted ON sessions;
DROP TRIGGER trg_sessions_revoked ON sessions;
DROP FUNCTION notify_session_revoked();
