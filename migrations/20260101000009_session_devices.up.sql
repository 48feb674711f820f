-- Where and when each session was opened and last used, for ListSessions (OWASP ASVS 5.0
-- V7.4.3, V7.5.2: a user sees their sessions and ends any of them). The client's user-agent
-- (at most 256 characters) and address as the server saw them; NULL when not known (sessions
-- opened before this migration). last_used_at starts as the opening time.

ALTER TABLE sessions
    ADD COLUMN last_used_at TIMESTAMPTZ,
    ADD COLUMN created_user_agent TEXT CHECK (char_length(created_user_agent) <= 256),
    ADD COLUMN created_address TEXT CHECK (char_length(created_address) <= 64),
    ADD COLUMN last_user_agent TEXT CHECK (char_length(last_user_agent) <= 256),
    ADD COLUMN last_address TEXT CHECK (char_length(last_address) <= 64);

-- The last use of an existing session: its newest refresh token's issue.
UPDATE sessions s
SET last_used_at = COALESCE((SELECT max(r.created_at) FROM refresh_tokens r WHERE r.session_id = s.id), s.created_at);

ALTER TABLE sessions
    ALTER COLUMN last_used_at SET DEFAULT now(),
    ALTER COLUMN last_used_at SET NOT NULL;
