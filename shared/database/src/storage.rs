//! What the project's tables take on disk: each table's and index's size and each table's row
//! estimate (from `pg_class`, what the planner knows; no table is scanned), and the tombstones of
//! the change feed awaiting pruning (counted through an index of `task_tombstones`).
//!
//! Read for the metrics endpoint at most once a minute ([`REFRESH_EVERY`]), and only when the
//! instance has had calls since the last reading: a scrape of an idle instance is answered from
//! the last reading, so that an idle stack sends no statement and a serverless compute can
//! suspend (see `activity`).

use crate::handle::Db;
use crate::statement::observed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest time between two readings.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// The longest a reading may take before the scrape goes on with the last one.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// One table or index of the project's schema.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Relation {
    /// Its name, e.g. `tasks` or `idx_tasks_user_id`.
    pub name: String,
    /// `table` or `index`.
    pub kind: String,
    /// Bytes on disk (`pg_relation_size`, the main fork).
    pub size_bytes: i64,
    /// The planner's row estimate (`pg_class.reltuples`; 0 until the table is first analyzed).
    pub rows_estimate: i64,
}

/// One reading.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Storage {
    /// Every table and index in the schema the pool's connections use.
    pub relations: Vec<Relation>,
    /// Deleted tasks' tombstones in `task_tombstones`, kept for the sync retention time.
    pub tombstones: i64,
}

/// The last reading, and when the last one was tried.
pub struct StorageReadings {
    db: Db,
    last: Mutex<Last>,
}

#[derive(Default)]
struct Last {
    tried: Option<Instant>,
    storage: Option<Storage>,
}

impl StorageReadings {
    /// Readings of the database behind `db`, taken only while its activity shows calls.
    pub fn new(db: Db) -> Self {
        Self { db, last: Mutex::new(Last::default()) }
    }

    /// The latest reading, read anew when the last try is at least a minute old and the instance
    /// has had calls since. None before the first reading; the last reading when a new one fails
    /// or takes over 2 s (the failure is logged, and not tried again for a minute).
    pub async fn current(&self) -> Option<Storage> {
        let activity = self.db.activity();
        let due = match self.last.lock().expect("not poisoned").tried {
            None => activity.is_active(),
            Some(at) => at.elapsed() >= REFRESH_EVERY && activity.idle_for() < at.elapsed(),
        };
        if due {
            self.last.lock().expect("not poisoned").tried = Some(Instant::now());
            match tokio::time::timeout(READ_TIMEOUT, read(&self.db)).await {
                Ok(Ok(storage)) => self.last.lock().expect("not poisoned").storage = Some(storage),
                Ok(Err(e)) => tracing::warn!(error = %e, "reading table sizes for /metrics failed"),
                Err(_) => tracing::warn!("reading table sizes for /metrics took over 2 s; kept the last reading"),
            }
        }
        self.last.lock().expect("not poisoned").storage.clone()
    }
}

/// Reads the sizes and the tombstones now.
pub async fn read(db: &Db) -> Result<Storage, sqlx::Error> {
    let relations = observed(
        "storage_relations",
        sqlx::query_as::<_, Relation>(
            "SELECT c.relname AS name,
                    CASE c.relkind WHEN 'i' THEN 'index' ELSE 'table' END AS kind,
                    pg_relation_size(c.oid) AS size_bytes,
                    greatest(c.reltuples, 0)::bigint AS rows_estimate
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i', 'p')
             ORDER BY c.relname",
        )
        .fetch_all(db),
    )
    .await?;
    let tombstones = if relations.iter().any(|r| r.name == "task_tombstones") {
        crate::statement::observed_one(
            "storage_tombstones",
            sqlx::query_scalar("SELECT count(*) FROM task_tombstones").fetch_one(db),
        )
        .await?
    } else {
        0
    };
    Ok(Storage { relations, tombstones })
}
