DROP TABLE tasks;
DROP TABLE users;
DROP FUNCTION set_updated_at();
