//! The SQL of the change feed (migrations 0007 and 0011): where a user's feed stands, the changes after a
//! position, the stats, and the pruning of old tombstones.

use crate::store::TaskRow;
use sqlx::PgExecutor;
use std::time::Duration;
use todo_shared::Caller;
use todo_shared::database::Db;
use todo_shared::database::statement::{observed, observed_one};

/// Where a user's feed stands: the last change number, and the highest pruned one (a cursor
/// below it has missed deletions that are no longer recorded).
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
pub struct Position {
    pub seq: i64,
    pub pruned_seq: i64,
}

#[tracing::instrument(level = "debug", skip_all)]
pub async fn position(db: impl PgExecutor<'_>, caller: &Caller) -> Result<Position, sqlx::Error> {
    let position: Option<Position> = observed(
        "feed_position",
        sqlx::query_as("SELECT seq, pruned_seq FROM task_feeds WHERE user_id = $1")
            .bind(caller.user_id)
            .fetch_optional(db),
    )
    .await?;
    Ok(position.unwrap_or_default())
}

/// One task's latest change after the cursor: the task as it is now, or None once it is deleted.
#[derive(Debug)]
pub struct Change {
    pub task_id: i32,
    pub seq: i64,
    pub created_seq: i64,
    pub task: Option<TaskRow>,
}

/// A feed row joined to its task; the task's columns are NULL once it is deleted.
#[derive(sqlx::FromRow)]
struct ChangeRow {
    task_id: i32,
    seq: i64,
    created_seq: i64,
    user_id: Option<uuid::Uuid>,
    title: Option<String>,
    description: Option<String>,
    completed: Option<bool>,
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
    version: Option<i64>,
}

impl ChangeRow {
    fn into_change(self) -> Change {
        let task = match (self.user_id, self.title, self.completed, self.version) {
            (Some(user_id), Some(title), Some(completed), Some(version)) => Some(TaskRow {
                id: self.task_id,
                user_id,
                title,
                description: self.description,
                completed,
                created_at: self.created_at,
                updated_at: self.updated_at,
                version,
            }),
            _ => None,
        };
        Change { task_id: self.task_id, seq: self.seq, created_seq: self.created_seq, task }
    }
}

/// The statement `changes_after` runs (public for the EXPLAIN test): the live tasks numbered
/// after the cursor and the tombstones after it, each read in number order from its own index
/// and merged. A tombstone at a place a task occupies again (an explicit id, a move back) tells
/// nothing: it comes with `created_seq = seq`, which `change_of` skips, so the cursor still
/// passes it.
pub const CHANGES_AFTER: &str = "SELECT c.task_id, c.seq,
            CASE WHEN c.user_id IS NULL AND (SELECT l.user_id FROM tasks l WHERE l.id = c.task_id) = $1
                 THEN c.seq ELSE c.created_seq END AS created_seq,
            c.user_id, c.title, c.description, c.completed, c.created_at, c.updated_at, c.version
     FROM ((SELECT id AS task_id, feed_seq AS seq, feed_created_seq AS created_seq,
                   user_id, title, description, completed, created_at, updated_at, xmin::text::bigint AS version
            FROM tasks WHERE user_id = $1 AND feed_seq > $2 ORDER BY feed_seq LIMIT $3)
           UNION ALL
           (SELECT task_id, seq, created_seq, NULL, NULL, NULL, NULL, NULL, NULL, NULL
            FROM task_tombstones WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3)) c
     ORDER BY c.seq
     LIMIT $3";

/// The changes after `after`, oldest first, at most `limit`, with the feed's position in the
/// same snapshot. Task rows come from the same snapshot as their change numbers.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn changes_after(
    pool: &Db,
    caller: &Caller,
    after: i64,
    limit: i64,
) -> Result<(Position, Vec<Change>), sqlx::Error> {
    // One snapshot for both statements (READ COMMITTED would take one each), so the position
    // and the changes agree: a prune committing in between cannot pass a token whose tombstones
    // it has just removed.
    let mut tx = pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
    let position = position(&mut tx, caller).await?;
    let rows: Vec<ChangeRow> = observed(
        "feed_changes_after",
        sqlx::query_as(CHANGES_AFTER).bind(caller.user_id).bind(after).bind(limit).fetch_all(&mut tx),
    )
    .await?;
    tx.commit().await?;
    Ok((position, rows.into_iter().map(ChangeRow::into_change).collect()))
}

/// The caller's task counts, from the (user_id, completed) index alone.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn stats(db: impl PgExecutor<'_>, caller: &Caller) -> Result<(i64, i64), sqlx::Error> {
    observed_one("task_stats", sqlx::query_as(STATS).bind(caller.user_id).fetch_one(db)).await
}

/// The statement `stats` runs (public for the EXPLAIN test).
pub const STATS: &str = "SELECT count(*), count(*) FILTER (WHERE completed) FROM tasks WHERE user_id = $1";

/// Deletes tombstones older than `retention` (raising each feed's pruned_seq past them) and the
/// feeds of deleted accounts, in batches so that no transaction holds many locks. Returns the
/// number of tombstones removed.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn prune(pool: &Db, retention: Duration) -> Result<u64, sqlx::Error> {
    let mut removed = 0;
    loop {
        let batch: i64 = observed_one(
            "prune_tombstones",
            sqlx::query_scalar(
                "WITH pruned AS (
                 DELETE FROM task_tombstones WHERE (user_id, task_id) IN (
                     SELECT user_id, task_id FROM task_tombstones
                     WHERE deleted_at < now() - make_interval(secs => $1) LIMIT 5000)
                 -- Again, on the row as it is when locked: a tombstone renewed meanwhile stays.
                 AND deleted_at < now() - make_interval(secs => $1)
                 RETURNING user_id, seq),
             raised AS (
                 UPDATE task_feeds f SET pruned_seq = GREATEST(f.pruned_seq, h.seq)
                 FROM (SELECT user_id, max(seq) AS seq FROM pruned GROUP BY user_id) h
                 WHERE f.user_id = h.user_id)
             SELECT count(*) FROM pruned",
            )
            .bind(retention.as_secs_f64())
            .fetch_one(pool),
        )
        .await?;
        if batch == 0 {
            break;
        }
        removed += batch as u64;
    }
    // Accounts that are gone: their sessions are gone too, so nobody can read these any more.
    observed(
        "prune_orphan_tombstones",
        sqlx::query("DELETE FROM task_tombstones d WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = d.user_id)")
            .execute(pool),
    )
    .await?;
    observed(
        "prune_orphan_feeds",
        sqlx::query("DELETE FROM task_feeds f WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = f.user_id)")
            .execute(pool),
    )
    .await?;
    Ok(removed)
}
