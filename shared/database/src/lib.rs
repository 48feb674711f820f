//! The database part both services share, a crate of its own so that what only needs the
//! database (the migrations in `tools/localpg`) builds without gRPC:
//!
//! - the PostgreSQL pool and its executors ([`Db`], [`Tx`]; [`pool`]),
//! - the per-call deadline ([`deadline`]), set by whoever runs the call (the server's call
//!   limits): a statement whose caller has gone is cancelled in PostgreSQL,
//! - the embedded migrations ([`MIGRATOR`], [`migrate`], [`migrate_when_ready`]), and looking at
//!   and reverting them by hand ([`migrations`]),
//! - what the statements, the pool and the tables look like to monitoring: a span and a
//!   duration per statement ([`statement`]), the wait for a pooled connection ([`pool_stats`]),
//!   table and index sizes ([`storage`]),
//! - the integrity checks of the `verify` command ([`verify`]),
//! - waiting for the database at start ([`waiting`]),
//! - whether the service has work ([`activity`]): background work pauses without it, so that a
//!   serverless database can suspend,
//! - telling an outage from a bug ([`is_unavailable`], [`is_deadline`], [`violated_constraint`]),
//! - its settings ([`DbConfig`]), and the environment parsing every part's settings use ([`env`]),
//!   kept here because this is the crate everything else builds on.
//!
//! It knows nothing of gRPC; `todo_shared::database` is this crate.

#![warn(missing_docs)]

pub mod activity;
mod classify;
pub mod config;
pub mod deadline;
pub mod env;
mod handle;
mod in_use;
pub mod migrations;
pub mod pool_stats;
pub mod statement;
pub mod storage;
pub mod verify;
pub mod waiting;

pub use classify::{is_deadline, is_unavailable, violated_constraint};
pub use config::DbConfig;
pub use deadline::DEFAULT_STATEMENT_TIMEOUT;
pub use handle::{Db, PoolMode, Tx};

use secrecy::ExposeSecret;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::time::Duration;

/// Every migration in `migrations/`, embedded at compile time so the binaries carry them.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A pooled connection idle this long is pinged before a call gets it (see `pool`).
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Builds the pool without connecting: a service starts even while the database is down and
/// reports NOT_SERVING until it answers.
pub fn pool(config: &DbConfig) -> Result<Db, sqlx::Error> {
    let mut options: PgConnectOptions = config.url.expose_secret().parse()?;
    options =
        options.application_name("todo").log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(0)
        // Fail fast when the database is away instead of holding the caller past its deadline.
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
        // sqlx's own test (a ping on every acquire) is a round trip per call: instead only a
        // connection that sat idle is pinged first, which is when it is likely to have died (a
        // restart, a failover, a serverless database that suspended); a dead one is replaced
        // before the call gets it. A busy pool's connections go straight to their statement.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    use sqlx::Connection;
                    conn.ping().await?;
                }
                Ok(true)
            })
        });
    let pool = match config.pool_mode {
        // The deadline is set up once per connection, not per call (see `deadline`).
        PoolMode::Session => pool.after_connect(|conn, _| Box::pin(deadline::configure_session(conn))),
        // A session SET would stay on a server connection that other clients get next: the
        // timeout is SET LOCAL in each transaction instead (see `Db`).
        PoolMode::Transaction => pool,
    };
    Ok(Db::new(pool.connect_lazy_with(options), config.pool_mode))
}

/// Options for a session-capable connection: `DATABASE_DIRECT_URL` when set (behind a pooler in
/// transaction mode), else the pool's own.
pub fn direct_options(db: &Db, config: &DbConfig) -> Result<PgConnectOptions, sqlx::Error> {
    match &config.direct_url {
        Some(url) => Ok(url.expose_secret().parse::<PgConnectOptions>()?.application_name("todo")),
        None => Ok((*db.pool().connect_options()).clone()),
    }
}

/// Applies the migrations when RUN_MIGRATIONS says so, waiting for the database as long as it
/// takes (see `waiting`). They run on a direct connection: sqlx holds a session advisory lock
/// across them, which a pooler in transaction mode would not keep.
pub async fn migrate_when_ready(db: &Db, config: &DbConfig) -> anyhow::Result<()> {
    if config.run_migrations {
        use anyhow::Context;
        let direct = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(direct_options(db, config)?);
        let direct = Db::new(direct, PoolMode::Session);
        waiting::until_database_ready(&direct, "applying migrations", || async {
            migrate(direct.pool()).await.context("applying migrations")
        })
        .await?;
        direct.close().await;
    }
    Ok(())
}

/// Applies pending migrations. sqlx holds a PostgreSQL advisory lock while it migrates, so
/// several instances starting at once apply each migration exactly once.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}
