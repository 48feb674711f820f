-- Back to 0007's feed, with its data: task_versions again holds a row per live task (from the
-- numbers on the tasks) and per tombstone (a tombstone where a task is again is left out).
DROP TRIGGER trg_tasks_number_new ON tasks;
DROP TRIGGER trg_tasks_number_change ON tasks;
DROP TRIGGER trg_tasks_tombstone ON tasks;
DROP FUNCTION number_new_task();
DROP FUNCTION number_changed_task();
DROP FUNCTION record_task_tombstone();

CREATE TABLE task_versions (
    user_id UUID NOT NULL,
    task_id INTEGER NOT NULL,
    -- The task's latest change.
    seq BIGINT NOT NULL,
    -- The change that created it (or re-created it under this user): tells CREATED from UPDATED.
    created_seq BIGINT NOT NULL,
    deleted_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (user_id, task_id)
);

CREATE UNIQUE INDEX idx_task_versions_user_seq ON task_versions(user_id, seq);
CREATE INDEX idx_task_versions_deleted_at ON task_versions(deleted_at) WHERE deleted_at IS NOT NULL;

INSERT INTO task_versions (user_id, task_id, seq, created_seq)
SELECT user_id, id, feed_seq, coalesce(feed_created_seq, feed_seq) FROM tasks WHERE feed_seq IS NOT NULL;
INSERT INTO task_versions (user_id, task_id, seq, created_seq, deleted_at)
SELECT d.user_id, d.task_id, d.seq, d.created_seq, d.deleted_at FROM task_tombstones d
WHERE NOT EXISTS (SELECT 1 FROM tasks t WHERE t.id = d.task_id AND t.user_id = d.user_id);

DROP TABLE task_tombstones;
DROP INDEX idx_tasks_user_feed_seq;
ALTER TABLE tasks DROP COLUMN feed_seq, DROP COLUMN feed_created_seq;

CREATE INDEX idx_task_feeds_changed_xid ON task_feeds(changed_xid);

-- The next change number of a user; locks the user's counter until the transaction ends.
CREATE FUNCTION next_task_change(p_user_id UUID) RETURNS BIGINT
LANGUAGE sql AS $$
    INSERT INTO task_feeds (user_id, seq) VALUES (p_user_id, 1)
    ON CONFLICT (user_id) DO UPDATE SET seq = task_feeds.seq + 1, changed_xid = pg_current_xact_id()
    RETURNING seq;
$$;

CREATE FUNCTION record_task_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    change BIGINT;
    moved BOOLEAN := TG_OP = 'UPDATE' AND (OLD.id <> NEW.id OR OLD.user_id <> NEW.user_id);
BEGIN
    -- A deletion, or an update that moves the task to another id or user: a tombstone for the old one.
    IF TG_OP = 'DELETE' OR moved THEN
        change := next_task_change(OLD.user_id);
        INSERT INTO task_versions (user_id, task_id, seq, created_seq, deleted_at)
        VALUES (OLD.user_id, OLD.id, change, change, now())
        ON CONFLICT (user_id, task_id) DO UPDATE SET seq = EXCLUDED.seq, deleted_at = EXCLUDED.deleted_at;
    END IF;
    IF TG_OP = 'INSERT' OR TG_OP = 'UPDATE' THEN
        change := next_task_change(NEW.user_id);
        INSERT INTO task_versions (user_id, task_id, seq, created_seq)
        VALUES (NEW.user_id, NEW.id, change, change)
        ON CONFLICT (user_id, task_id) DO UPDATE SET
            seq = EXCLUDED.seq,
            created_seq = CASE WHEN TG_OP = 'INSERT' OR moved OR task_versions.deleted_at IS NOT NULL
                               THEN EXCLUDED.created_seq ELSE task_versions.created_seq END,
            deleted_at = NULL;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER trg_tasks_change_feed AFTER INSERT OR UPDATE OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION record_task_change();

CREATE OR REPLACE FUNCTION reset_task_feeds() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE task_feeds SET seq = seq + 1, pruned_seq = seq + 1, changed_xid = pg_current_xact_id();
    DELETE FROM task_versions;
    RETURN NULL;
END;
$$;
