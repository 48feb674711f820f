//! `Db` and `Tx`: what the stores run their statements on, the same to them whether PostgreSQL
//! is reached directly (or through a pooler in session mode) or through a pooler in transaction
//! mode (`DB_POOL_MODE=transaction`: PgBouncer, Neon's pooled endpoint).
//!
//! In transaction mode a server connection is ours only until the transaction ends, which breaks
//! two things sqlx does by default, and hides a third:
//! - it prepares *named* statements and keeps them on the server connection, where the next
//!   client's statement of the same name collides with them (or its own is not found): so every
//!   statement runs unnamed;
//! - it parses an unnamed statement and executes it in two round trips, each ending in Sync, and
//!   the pooler may hand the second to another server connection: so every statement runs inside
//!   a transaction, which keeps the server connection ours from BEGIN to COMMIT. The call's
//!   statement_timeout travels in the same round trip as `SET LOCAL`;
//! - a statement waiting in the pooler's queue (its server connections gone with PostgreSQL)
//!   is out of statement_timeout's reach: the wait is bounded here, so the client hears
//!   UNAVAILABLE before its deadline (see `Budget`).
//!
//! In session mode all three are plain sqlx: cached named statements, and a statement outside a
//! transaction is one round trip.
//!
//! Either way every connection is taken from the pool here ([`Db::acquire`]), which times the
//! wait for one and counts the waits that ran out (`pool_stats`).

use super::activity::Activity;
use super::deadline::DEFAULT_STATEMENT_TIMEOUT;
use super::in_use::InUse;
use super::pool_stats::PoolStats;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use sqlx::error::BoxDynError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgPool, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Execute, Executor, Postgres, SqlStr};
use std::fmt;
use std::future::Future;
use std::time::Duration;

/// What sits between the services and PostgreSQL, as far as sessions go (`DB_POOL_MODE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PoolMode {
    /// PostgreSQL itself, or a pooler that gives each client a server connection for the whole
    /// session (PgBouncer `pool_mode = session`).
    #[default]
    Session,
    /// A pooler that gives a server connection for one transaction at a time (PgBouncer
    /// `pool_mode = transaction`, Neon's pooled endpoint).
    Transaction,
}

/// The services' handle on the database: a pool, and how to use it given the pool mode.
/// `&Db` is an executor like `&PgPool`.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
    mode: PoolMode,
    activity: Activity,
    stats: PoolStats,
}

impl Db {
    /// `pool`, used as `mode` says (in transaction mode every statement runs unnamed inside a
    /// transaction).
    pub fn new(pool: PgPool, mode: PoolMode) -> Self {
        Self { pool, mode, activity: Activity::new(), stats: PoolStats::new() }
    }

    /// The time statements waited for a connection, and the waits that ran out.
    pub fn pool_stats(&self) -> &PoolStats {
        &self.stats
    }

    /// A connection from the pool, the wait timed (`PoolStats`).
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        self.stats.time(self.pool.acquire()).await
    }

    /// When the service last had work: the server records each call here, and the background
    /// jobs that query on their own pause while there is none (see `activity`).
    pub fn activity(&self) -> &Activity {
        &self.activity
    }

    /// The pool itself: for its size and settings, not for statements (they go through `Db`).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// How statements are sent (`DB_POOL_MODE`).
    pub fn mode(&self) -> PoolMode {
        self.mode
    }

    /// Closes the pool: waits for connections in use to come back, then closes every one.
    pub async fn close(&self) {
        self.pool.close().await
    }

    /// Begins a transaction (READ COMMITTED, read-write).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.begin_with("BEGIN").await
    }

    /// Begins a transaction with `begin`, a BEGIN statement of our own such as
    /// `BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY`.
    pub async fn begin_with(&self, begin: &'static str) -> Result<Tx, sqlx::Error> {
        let held = match self.mode {
            // The connection's statement_timeout and client check were set when it opened.
            PoolMode::Session => {
                let mut held = InUse::new(self.acquire().await?);
                held.transaction_control(begin.to_owned(), true).await?;
                held
            }
            // One round trip: the pooler forwards both statements to the same server connection.
            PoolMode::Transaction => {
                let budget = Budget::now();
                let millis = budget.statement.as_millis().max(1);
                let begin = format!("{begin}; SET LOCAL statement_timeout = {millis}");
                budget
                    .bound(async {
                        let mut held = InUse::new(self.acquire().await?);
                        held.transaction_control(begin, true).await?;
                        Ok(held)
                    })
                    .await?
            }
        };
        Ok(Tx { held, mode: self.mode })
    }
}

/// The time a call's database work may take behind a transaction pooler. PostgreSQL cancels a
/// statement at `statement` (DEADLINE_EXCEEDED, the statement is gone); work that gets no answer
/// at all (queued in the pooler while PostgreSQL is away) is given up at `answer_by`, a little
/// later but still before the client's deadline, so the client hears UNAVAILABLE rather than
/// nothing.
#[derive(Clone, Copy)]
struct Budget {
    statement: Duration,
    answer_by: Duration,
}

impl Budget {
    fn now() -> Self {
        let left = super::deadline::remaining().unwrap_or(DEFAULT_STATEMENT_TIMEOUT).min(DEFAULT_STATEMENT_TIMEOUT);
        // 5% of the time left, between 5 and 100 ms: enough for an answer to travel back.
        let margin = (left / 20).clamp(Duration::from_millis(5), Duration::from_millis(100));
        Budget { statement: left.saturating_sub(margin * 2), answer_by: left.saturating_sub(margin) }
    }

    async fn bound<T>(self, work: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
        match tokio::time::timeout(self.answer_by, work).await {
            Ok(answer) => answer,
            // An I/O time-out: the database is unavailable to this call (UNAVAILABLE).
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer through the pooler within the call's time",
            ))),
        }
    }
}

/// A pool used in session mode (tests and tools that talk to PostgreSQL directly).
impl From<PgPool> for Db {
    fn from(pool: PgPool) -> Self {
        Self::new(pool, PoolMode::Session)
    }
}

/// A transaction begun by [`Db::begin`]; `&mut Tx` is an executor. Dropped without `commit`, it
/// rolls back.
/// Dropped in the middle of a statement (its call ran out of time), its connection is closed and
/// PostgreSQL rolls it back (see `in_use`).
pub struct Tx {
    held: InUse,
    mode: PoolMode,
}

impl Tx {
    /// Commits the transaction.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.held.transaction_control("COMMIT".to_owned(), false).await
    }

    /// Rolls the transaction back.
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        self.held.transaction_control("ROLLBACK".to_owned(), false).await
    }
}

impl fmt::Debug for Tx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx").field("mode", &self.mode).finish_non_exhaustive()
    }
}

/// A statement that sqlx must not prepare under a name (see the module comment).
struct Unnamed<E>(E);

impl<'q, E: Execute<'q, Postgres>> Execute<'q, Postgres> for Unnamed<E> {
    fn sql(self) -> SqlStr {
        self.0.sql()
    }

    fn statement(&self) -> Option<&PgStatement> {
        self.0.statement()
    }

    fn take_arguments(&mut self) -> Result<Option<PgArguments>, BoxDynError> {
        self.0.take_arguments()
    }

    fn persistent(&self) -> bool {
        false
    }
}

type Step = Either<PgQueryResult, PgRow>;

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Step, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.mode {
            // Read whole, as sqlx's own pool executor would stream it: our statements return a
            // page at most.
            PoolMode::Session => stream::once(async move {
                let mut held = InUse::new(self.acquire().await?);
                let steps: Result<Vec<Step>, _> = held.start().fetch_many(query).try_collect().await;
                held.settle();
                Ok::<_, sqlx::Error>(stream::iter(steps?.into_iter().map(Ok)))
            })
            .try_flatten()
            .boxed(),
            // The whole result is read before COMMIT; our statements return a page at most.
            PoolMode::Transaction => stream::once(async move {
                let steps: Vec<Step> = Budget::now()
                    .bound(async move {
                        let mut tx = self.begin().await?;
                        let steps = (&mut tx).fetch_many(query).try_collect().await?;
                        tx.commit().await?;
                        Ok(steps)
                    })
                    .await?;
                Ok::<_, sqlx::Error>(stream::iter(steps.into_iter().map(Ok)))
            })
            .try_flatten()
            .boxed(),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        match self.mode {
            PoolMode::Session => Box::pin(async move {
                let mut held = InUse::new(self.acquire().await?);
                let row = held.start().fetch_optional(query).await;
                held.settle();
                row
            }),
            PoolMode::Transaction => Box::pin(Budget::now().bound(async move {
                let mut tx = self.begin().await?;
                let row = (&mut tx).fetch_optional(query).await?;
                tx.commit().await?;
                Ok(row)
            })),
        }
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        match self.mode {
            PoolMode::Session => Box::pin(async move {
                let mut held = InUse::new(self.acquire().await?);
                let statement = held.start().prepare_with(sql, parameters).await;
                held.settle();
                statement
            }),
            PoolMode::Transaction => Box::pin(async { Err(named_statements_refused()) }),
        }
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.describe(sql)
    }
}

impl<'c> Executor<'c> for &'c mut Tx {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Step, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        // Read whole (our statements return a page at most), so that the statement counts as
        // answered only once every row is in.
        stream::once(async move {
            let conn = self.held.start();
            let steps: Result<Vec<Step>, _> = match self.mode {
                PoolMode::Session => conn.fetch_many(query).try_collect().await,
                PoolMode::Transaction => conn.fetch_many(Unnamed(query)).try_collect().await,
            };
            self.held.settle();
            Ok::<_, sqlx::Error>(stream::iter(steps?.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        Box::pin(async move {
            let conn = self.held.start();
            let row = match self.mode {
                PoolMode::Session => conn.fetch_optional(query).await,
                PoolMode::Transaction => conn.fetch_optional(Unnamed(query)).await,
            };
            self.held.settle();
            row
        })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        match self.mode {
            PoolMode::Session => Box::pin(async move {
                let statement = self.held.start().prepare_with(sql, parameters).await;
                self.held.settle();
                statement
            }),
            PoolMode::Transaction => Box::pin(async { Err(named_statements_refused()) }),
        }
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let description = self.held.start().describe(sql).await;
            self.held.settle();
            description
        })
    }
}

fn named_statements_refused() -> sqlx::Error {
    sqlx::Error::Configuration(
        "prepared statement objects cannot outlive a transaction with DB_POOL_MODE=transaction".into(),
    )
}
