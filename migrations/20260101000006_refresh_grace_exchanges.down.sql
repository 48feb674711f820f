ALTER TABLE refresh_tokens DROP COLUMN grace_exchanges;
