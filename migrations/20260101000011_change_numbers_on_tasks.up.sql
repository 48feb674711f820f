-- The change feed of 0007 at a fraction of its cost per write. Same contract (SyncTasks,
-- WatchTasks) and the same guarantees; what changes is where a change number is kept.
--
-- 0007 made every write run two upserts after the row was written: the user's counter in
-- task_feeds (never a HOT update, since changed_xid was indexed) and the task's row in
-- task_versions (a heap row and two index entries per new task, a new row version per update).
-- PostgreSQL spent about twice a plain insert's CPU per insert (bench/feed-cost.sh). Now:
--
-- - A live task carries its change numbers itself (tasks.feed_seq, tasks.feed_created_seq), set
--   by a BEFORE trigger in the row being written: one more index entry on tasks instead of a row
--   elsewhere. task_tombstones keeps the deleted tasks (and a task's old place when an update
--   moves it to another id or user) until they are pruned.
-- - The counter is a plain UPDATE written in the trigger (no SQL function to plan per
--   transaction), and changed_xid has no index: the update is HOT. One trigger call per write,
--   with no after-trigger queue for inserts and updates. The hub asks only about the
--   users with open streams, by primary key, so it never needed that index.
--
-- Taking the number still locks the user's counter row until the transaction ends: a user's
-- changes commit in the order of their numbers, and a cursor never skips a slow transaction.
--
-- The tasks columns are additions; the design document's columns, constraints, indexes and
-- triggers are untouched.

DROP TRIGGER trg_tasks_change_feed ON tasks;
DROP FUNCTION record_task_change();
DROP FUNCTION next_task_change(UUID);
DROP INDEX idx_task_feeds_changed_xid;

-- Nullable, so that rows written with triggers off (session_replication_role = replica) still go
-- in; `verify` reports a task without its numbers.
ALTER TABLE tasks
    ADD COLUMN feed_seq BIGINT,         -- the task's latest change
    ADD COLUMN feed_created_seq BIGINT; -- the change that created it here: CREATED vs UPDATED

-- The backfill rewrites each row (new xmin: etags held by clients go stale, as after any edit);
-- updated_at stays as it is.
ALTER TABLE tasks DISABLE TRIGGER trg_tasks_updated_at;
UPDATE tasks t SET feed_seq = v.seq, feed_created_seq = v.created_seq
FROM task_versions v
WHERE v.user_id = t.user_id AND v.task_id = t.id AND v.deleted_at IS NULL;
-- Tasks written while the feed trigger was off: numbered after their user's last change.
INSERT INTO task_feeds (user_id) SELECT DISTINCT user_id FROM tasks WHERE feed_seq IS NULL
ON CONFLICT (user_id) DO NOTHING;
UPDATE tasks t SET feed_seq = n.seq, feed_created_seq = n.seq
FROM (SELECT t.id, f.seq + row_number() OVER (PARTITION BY t.user_id ORDER BY t.id) AS seq
      FROM tasks t JOIN task_feeds f USING (user_id) WHERE t.feed_seq IS NULL) n
WHERE t.id = n.id;
UPDATE task_feeds f SET seq = m.seq, changed_xid = pg_current_xact_id()
FROM (SELECT user_id, max(feed_seq) AS seq FROM tasks GROUP BY user_id) m
WHERE f.user_id = m.user_id AND m.seq > f.seq;
ALTER TABLE tasks ENABLE TRIGGER trg_tasks_updated_at;

CREATE INDEX idx_tasks_user_feed_seq ON tasks(user_id, feed_seq);

CREATE TABLE task_tombstones (
    user_id UUID NOT NULL,
    task_id INTEGER NOT NULL,
    -- The change that removed the task from here.
    seq BIGINT NOT NULL,
    -- The change that had created it: a client that never saw it is told nothing.
    created_seq BIGINT NOT NULL,
    deleted_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (user_id, task_id)
);

CREATE UNIQUE INDEX idx_task_tombstones_user_seq ON task_tombstones(user_id, seq);
CREATE INDEX idx_task_tombstones_deleted_at ON task_tombstones(deleted_at);

INSERT INTO task_tombstones (user_id, task_id, seq, created_seq, deleted_at)
SELECT user_id, task_id, seq, created_seq, deleted_at FROM task_versions WHERE deleted_at IS NOT NULL;

DROP TABLE task_versions;

-- The next change number of a user, inline in each trigger function below (a call to a SQL
-- function from PL/pgSQL plans its body again in every transaction). The UPDATE locks the
-- user's counter row until the transaction ends; the INSERT is for the user's first change (or a
-- concurrent first one got there first).
--
-- An insert numbers the new task and creates it there.
CREATE FUNCTION number_new_task() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE task_feeds SET seq = seq + 1, changed_xid = pg_current_xact_id()
    WHERE user_id = NEW.user_id
    RETURNING seq, seq INTO NEW.feed_seq, NEW.feed_created_seq;
    IF NOT FOUND THEN
        INSERT INTO task_feeds (user_id, seq) VALUES (NEW.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET seq = task_feeds.seq + 1, changed_xid = pg_current_xact_id()
        RETURNING seq, seq INTO NEW.feed_seq, NEW.feed_created_seq;
    END IF;
    RETURN NEW;
END;
$$;

-- An update numbers the task again and keeps its creation; one that moves the task to another id
-- or user first leaves a tombstone, numbered in the old owner's feed, and creates it anew. (Here
-- rather than in an AFTER trigger: the row is locked by now, and this saves every update the
-- after-trigger queue.)
CREATE FUNCTION number_changed_task() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    change BIGINT;
BEGIN
    IF OLD.id <> NEW.id OR OLD.user_id <> NEW.user_id THEN
        UPDATE task_feeds SET seq = seq + 1, changed_xid = pg_current_xact_id()
        WHERE user_id = OLD.user_id
        RETURNING seq INTO change;
        IF NOT FOUND THEN
            INSERT INTO task_feeds (user_id, seq) VALUES (OLD.user_id, 1)
            ON CONFLICT (user_id) DO UPDATE SET seq = task_feeds.seq + 1, changed_xid = pg_current_xact_id()
            RETURNING seq INTO change;
        END IF;
        INSERT INTO task_tombstones (user_id, task_id, seq, created_seq, deleted_at)
        VALUES (OLD.user_id, OLD.id, change, coalesce(OLD.feed_created_seq, change), now())
        ON CONFLICT (user_id, task_id) DO UPDATE SET
            seq = EXCLUDED.seq, created_seq = EXCLUDED.created_seq, deleted_at = EXCLUDED.deleted_at;
        OLD.feed_created_seq := NULL; -- created anew below
    END IF;
    -- A task written while the feed's triggers were off has no creation: this change is it.
    UPDATE task_feeds SET seq = seq + 1, changed_xid = pg_current_xact_id()
    WHERE user_id = NEW.user_id
    RETURNING seq, coalesce(OLD.feed_created_seq, seq) INTO NEW.feed_seq, NEW.feed_created_seq;
    IF NOT FOUND THEN
        INSERT INTO task_feeds (user_id, seq) VALUES (NEW.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET seq = task_feeds.seq + 1, changed_xid = pg_current_xact_id()
        RETURNING seq, coalesce(OLD.feed_created_seq, seq) INTO NEW.feed_seq, NEW.feed_created_seq;
    END IF;
    RETURN NEW;
END;
$$;

-- A deleted task's tombstone, numbered in its owner's feed.
CREATE FUNCTION record_task_tombstone() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    change BIGINT;
BEGIN
    UPDATE task_feeds SET seq = seq + 1, changed_xid = pg_current_xact_id()
    WHERE user_id = OLD.user_id
    RETURNING seq INTO change;
    IF NOT FOUND THEN
        INSERT INTO task_feeds (user_id, seq) VALUES (OLD.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET seq = task_feeds.seq + 1, changed_xid = pg_current_xact_id()
        RETURNING seq INTO change;
    END IF;
    INSERT INTO task_tombstones (user_id, task_id, seq, created_seq, deleted_at)
    VALUES (OLD.user_id, OLD.id, change, coalesce(OLD.feed_created_seq, change), now())
    ON CONFLICT (user_id, task_id) DO UPDATE SET
        seq = EXCLUDED.seq, created_seq = EXCLUDED.created_seq, deleted_at = EXCLUDED.deleted_at;
    RETURN NULL;
END;
$$;

-- BEFORE, so that the numbers are in the row as it is written. A tombstone at a place a task
-- occupies again (an explicit id, a move back) stays until pruned; readers ignore it while a task
-- is there.
CREATE TRIGGER trg_tasks_number_new BEFORE INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION number_new_task();

CREATE TRIGGER trg_tasks_number_change BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION number_changed_task();

CREATE TRIGGER trg_tasks_tombstone AFTER DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION record_task_tombstone();

-- TRUNCATE fires no row triggers: every feed starts over (as in 0007), and the tombstones go.
CREATE OR REPLACE FUNCTION reset_task_feeds() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE task_feeds SET seq = seq + 1, pruned_seq = seq + 1, changed_xid = pg_current_xact_id();
    DELETE FROM task_tombstones;
    RETURN NULL;
END;
$$;
