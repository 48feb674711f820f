DROP INDEX idx_tasks_user_updated_id;
DROP INDEX idx_tasks_user_created_id;
DROP TABLE task_create_requests;
