-- The change feed behind SyncTasks and WatchTasks: complete for every committed change to tasks,
-- whoever makes it (either service instance, an admin script, a migration, a cascade).
--
-- Every change to a user's tasks takes the next number of that user's counter (task_feeds.seq).
-- Taking it locks the counter row until the transaction ends, so a user's changes commit in the
-- order of their numbers: a reader that sees number n has every number below n, and a cursor
-- "changes after n" never skips a transaction that started first and committed last. The price
-- is that one user's writes commit one at a time, which a todo list never notices.
--
-- task_versions keeps one row per task: its latest change number, and a tombstone (deleted_at)
-- once it is deleted, so the feed stays as small as the task list and a client offline for a
-- month gets each change once. Tombstones are pruned after the retention time; a feed remembers
-- the highest pruned number (pruned_seq), and a cursor below it must sync again from the start.
--
-- Neither table references users: the cascade of an account deletion runs the tasks trigger
-- after the user row is gone. Feeds of deleted accounts are removed by task-service's pruning.
--
-- Live streams learn that a feed moved by polling `changed_xid` (the last writer's transaction id)
-- from below the oldest transaction that was still running at the previous poll, which finds
-- every feed changed by a transaction that had not finished then. No NOTIFY: a notifying
-- transaction holds a database-wide lock through its commit, which would make every task write
-- commit one after another.

CREATE TABLE task_feeds (
    user_id UUID PRIMARY KEY,
    seq BIGINT NOT NULL DEFAULT 0,
    pruned_seq BIGINT NOT NULL DEFAULT 0,
    changed_xid XID8 NOT NULL DEFAULT pg_current_xact_id()
) WITH (fillfactor = 50); -- updated on every write: room on the page for the new row versions

CREATE INDEX idx_task_feeds_changed_xid ON task_feeds(changed_xid);

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

-- Tasks that exist before the feed: numbered per user in id order.
INSERT INTO task_versions (user_id, task_id, seq, created_seq)
SELECT user_id, id, n, n
FROM (SELECT user_id, id, row_number() OVER (PARTITION BY user_id ORDER BY id) AS n FROM tasks) numbered;

INSERT INTO task_feeds (user_id, seq)
SELECT user_id, max(seq) FROM task_versions GROUP BY user_id;

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

-- TRUNCATE fires no row triggers: instead every feed starts over, so every client syncs again
-- from the start (its cursor falls below pruned_seq), and every stream looks at once.
CREATE FUNCTION reset_task_feeds() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE task_feeds SET seq = seq + 1, pruned_seq = seq + 1, changed_xid = pg_current_xact_id();
    DELETE FROM task_versions;
    RETURN NULL;
END;
$$;

CREATE TRIGGER trg_tasks_truncate_feed AFTER TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION reset_task_feeds();
