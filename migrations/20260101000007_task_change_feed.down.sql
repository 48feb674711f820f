DROP TRIGGER trg_tasks_truncate_feed ON tasks;
DROP FUNCTION reset_task_feeds();
DROP TRIGGER trg_tasks_change_feed ON tasks;
DROP FUNCTION record_task_change();
DROP FUNCTION next_task_change(UUID);
DROP TABLE task_versions;
DROP TABLE task_feeds;
