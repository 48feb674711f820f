DROP TRIGGER trg_sessions_deletions_recorded ON sessions;
DROP FUNCTION record_session_deletions();
DROP TABLE session_deletions;
