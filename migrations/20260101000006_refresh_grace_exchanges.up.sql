-- How many extra pairs a spent refresh token has yielded within the grace window, which is
-- bounded so that the window cannot be used to mint pairs without end.
ALTER TABLE refresh_tokens ADD COLUMN grace_exchanges INTEGER NOT NULL DEFAULT 0;
