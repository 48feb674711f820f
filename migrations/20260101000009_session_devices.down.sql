ALTER TABLE sessions
    DROP COLUMN last_used_at,
    DROP COLUMN created_user_agent,
    DROP COLUMN created_address,
    DROP COLUMN last_user_agent,
    DROP COLUMN last_address;
