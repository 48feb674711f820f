//! Every SQL statement of task-service. Each takes the verified `Caller` and has `user_id` in
//! its WHERE clause (or VALUES), so no statement can reach another user's rows.

use crate::domain::{Description, Etag, OrderBy, RequestId, Title};
use crate::page_token::Cursor;
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgExecutor};
use todo_shared::Caller;
use todo_shared::database::Db;
use todo_shared::database::statement::{observed, observed_one};
use uuid::Uuid;

/// The columns every statement returns. `xmin` (the id of the transaction that wrote this row
/// version) changes with every update, whoever makes it, so it serves as the etag without a
/// column of our own.
const COLUMNS: &str =
    "id, user_id, title, description, completed, created_at, updated_at, xmin::text::bigint AS version";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    pub id: i32,
    pub user_id: Uuid,
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub version: i64,
}

/// The outcome of a conditional write.
pub enum Written<T> {
    Done(T),
    NotFound,
    EtagMismatch,
}

/// Inserts a task unless the caller already has `max_tasks`: None then. Checked in the same
/// statement as the insert, cheaply first: the user's feed counter (`task_feeds.seq`) counts
/// every change, so while it is below `max_tasks` so is the number of tasks, and one primary-key
/// read settles it. Only past that are the tasks counted, and the count stops at `max_tasks`
/// rows of idx_tasks_user_created_id. Concurrent creates of one user may pass it together, so a user can end up a few
/// (at most the calls in flight) over the limit, never far.
pub async fn insert(
    db: impl PgExecutor<'_>,
    caller: &Caller,
    title: &Title,
    description: &Description,
    max_tasks: i64,
) -> Result<Option<TaskRow>, sqlx::Error> {
    observed(
        "insert_task",
        sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO tasks (user_id, title, description)
         SELECT $1, $2, $3
         WHERE coalesce((SELECT seq FROM task_feeds WHERE user_id = $1), 0) < $4
            OR (SELECT count(*) FROM (SELECT 1 FROM tasks WHERE user_id = $1 LIMIT $4) mine) < $4
         RETURNING {COLUMNS}"
        )))
        .bind(caller.user_id)
        .bind(title.as_str())
        .bind(description.as_option())
        .bind(max_tasks)
        .fetch_optional(db),
    )
    .await
}

async fn by_request_id(
    db: impl PgExecutor<'_>,
    caller: &Caller,
    request_id: &RequestId,
) -> Result<Option<TaskRow>, sqlx::Error> {
    observed(
        "task_by_request_id",
        sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tasks
         WHERE user_id = $1 AND id = (SELECT task_id FROM task_create_requests WHERE user_id = $1 AND request_id = $2)"
        )))
        .bind(caller.user_id)
        .bind(request_id.as_str())
        .fetch_optional(db),
    )
    .await
}

/// Creates a task once per request id: a repeat (even a concurrent one) returns the task the
/// first call created. None when the caller already has `max_tasks` (see `insert`).
pub async fn insert_once(
    pool: &Db,
    caller: &Caller,
    request_id: &RequestId,
    title: &Title,
    description: &Description,
    max_tasks: i64,
) -> Result<Option<TaskRow>, sqlx::Error> {
    if let Some(task) = by_request_id(pool, caller, request_id).await? {
        return Ok(Some(task));
    }
    let mut tx = pool.begin().await?;
    let Some(task) = insert(&mut tx, caller, title, description, max_tasks).await? else {
        return Ok(None);
    };
    // A concurrent twin blocks here on the primary key until the first commits, then conflicts.
    let claimed = observed(
        "claim_request_id",
        sqlx::query(
            "INSERT INTO task_create_requests (user_id, request_id, task_id) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, request_id) DO NOTHING",
        )
        .bind(caller.user_id)
        .bind(request_id.as_str())
        .bind(task.id)
        .execute(&mut tx),
    )
    .await?
    .rows_affected()
        == 1;
    if claimed {
        tx.commit().await?;
        return Ok(Some(task));
    }
    tx.rollback().await?;
    match by_request_id(pool, caller, request_id).await? {
        Some(task) => Ok(Some(task)),
        // The first task was deleted in between, which frees the request id: try again once.
        None => Box::pin(insert_once(pool, caller, request_id, title, description, max_tasks)).await,
    }
}

pub async fn get(db: impl PgExecutor<'_>, caller: &Caller, id: i32) -> Result<Option<TaskRow>, sqlx::Error> {
    observed(
        "get_task",
        sqlx::query_as(AssertSqlSafe(format!("SELECT {COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2")))
            .bind(id)
            .bind(caller.user_id)
            .fetch_optional(db),
    )
    .await
}

/// One page in keyset order: rows strictly after `after`, `limit` of them. Each variant is a
/// fixed statement, so PostgreSQL plans it once per connection and uses
/// idx_tasks_user_created_id or idx_tasks_user_updated_id for any page depth.
pub async fn list(
    db: impl PgExecutor<'_>,
    caller: &Caller,
    completed: Option<bool>,
    order: OrderBy,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Vec<TaskRow>, sqlx::Error> {
    let sql = list_statement(completed.is_some(), order, after.is_some());
    // Only fixed fragments above: no request value is ever formatted into the statement.
    let mut query = sqlx::query_as(AssertSqlSafe(sql)).bind(caller.user_id);
    if let Some(completed) = completed {
        query = query.bind(completed);
    }
    if let Some(cursor) = after {
        query = query.bind(cursor.time).bind(cursor.id);
    }
    observed("list_tasks", query.bind(limit).fetch_all(db)).await
}

/// The statement `list` runs for this shape of query (public for the EXPLAIN test).
pub fn list_statement(filter_completed: bool, order: OrderBy, after_cursor: bool) -> String {
    let (column, direction, comparison) = match order {
        OrderBy::CreateTimeAsc => ("created_at", "ASC", ">"),
        OrderBy::CreateTimeDesc => ("created_at", "DESC", "<"),
        OrderBy::UpdateTimeAsc => ("updated_at", "ASC", ">"),
        OrderBy::UpdateTimeDesc => ("updated_at", "DESC", "<"),
    };
    let mut sql = format!("SELECT {COLUMNS} FROM tasks WHERE user_id = $1");
    let mut next = 2;
    if filter_completed {
        sql.push_str(&format!(" AND completed = ${next}"));
        next += 1;
    }
    if after_cursor {
        sql.push_str(&format!(" AND ({column}, id) {comparison} (${}, ${})", next, next + 1));
        next += 2;
    }
    sql.push_str(&format!(" ORDER BY {column} {direction}, id {direction} LIMIT ${next}"));
    sql
}

/// The fields an update sets; None leaves a field as it is.
pub struct Patch {
    pub title: Option<Title>,
    pub description: Option<Description>,
    pub completed: Option<bool>,
}

pub async fn update(
    pool: &Db,
    caller: &Caller,
    id: i32,
    patch: &Patch,
    etag: Option<Etag>,
) -> Result<Written<TaskRow>, sqlx::Error> {
    let row: Option<TaskRow> = observed(
        "update_task",
        sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE tasks SET
             title = COALESCE($3, title),
             description = CASE WHEN $4 THEN $5 ELSE description END,
             completed = COALESCE($6, completed)
         WHERE id = $1 AND user_id = $2 AND ($7::bigint IS NULL OR xmin::text::bigint = $7)
         RETURNING {COLUMNS}"
        )))
        .bind(id)
        .bind(caller.user_id)
        .bind(patch.title.as_ref().map(Title::as_str))
        .bind(patch.description.is_some())
        .bind(patch.description.as_ref().and_then(Description::as_option))
        .bind(patch.completed)
        .bind(etag.map(|e| e.0))
        .fetch_optional(pool),
    )
    .await?;
    match row {
        Some(row) => Ok(Written::Done(row)),
        None => why_not_written(pool, caller, id).await,
    }
}

pub async fn delete(pool: &Db, caller: &Caller, id: i32, etag: Option<Etag>) -> Result<Written<()>, sqlx::Error> {
    let deleted = observed(
        "delete_task",
        sqlx::query(
            "DELETE FROM tasks WHERE id = $1 AND user_id = $2 AND ($3::bigint IS NULL OR xmin::text::bigint = $3)",
        )
        .bind(id)
        .bind(caller.user_id)
        .bind(etag.map(|e| e.0))
        .execute(pool),
    )
    .await?
    .rows_affected();
    if deleted == 1 { Ok(Written::Done(())) } else { why_not_written(pool, caller, id).await }
}

/// After a conditional write matched nothing: the task is missing (or another user's), or its
/// etag moved on.
async fn why_not_written<T>(pool: &Db, caller: &Caller, id: i32) -> Result<Written<T>, sqlx::Error> {
    let exists: bool = observed_one(
        "task_exists",
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tasks WHERE id = $1 AND user_id = $2)")
            .bind(id)
            .bind(caller.user_id)
            .fetch_one(pool),
    )
    .await?;
    Ok(if exists { Written::EtagMismatch } else { Written::NotFound })
}
