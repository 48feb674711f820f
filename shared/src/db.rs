//! The PostgreSQL pool, the embedded migrations, and telling an outage from a bug.

use crate::config::DbConfig;
use secrecy::ExposeSecret;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::time::Duration;

/// Every migration in `migrations/`, embedded at compile time so the binaries carry them.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Builds the pool without connecting: a service starts even while the database is down and
/// reports NOT_SERVING until it answers.
pub fn pool(config: &DbConfig) -> Result<PgPool, sqlx::Error> {
    let mut options: PgConnectOptions = config.url.expose_secret().parse()?;
    options =
        options.application_name("todo").log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    if !config.statement_cache {
        // Beware: sqlx 0.9 still prepares a named statement per execution with the cache off,
        // and never closes it (tools/faults/tests/pgbouncer.rs shows both), so this neither
        // makes transaction pooling safe nor is free on a direct connection.
        tracing::warn!(
            "DB_STATEMENT_CACHE=false: each statement is prepared anew and kept by the server \
             connection; behind PgBouncer use session mode, or 1.21+ with max_prepared_statements"
        );
        options = options.statement_cache_capacity(0);
    }
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(0)
        // Fail fast when the database is away instead of holding the caller past its deadline.
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(options))
}

/// Options for a session-capable connection: `DATABASE_DIRECT_URL` when set (behind a pooler in
/// transaction mode), else the pool's own.
pub fn direct_options(pool: &PgPool, config: &DbConfig) -> Result<PgConnectOptions, sqlx::Error> {
    match &config.direct_url {
        Some(url) => Ok(url.expose_secret().parse::<PgConnectOptions>()?.application_name("todo")),
        None => Ok((*pool.connect_options()).clone()),
    }
}

/// Applies the migrations when RUN_MIGRATIONS says so, waiting for the database as long as it
/// takes (see `startup`). They run on a direct connection: sqlx holds a session advisory lock
/// across them, which a pooler in transaction mode would not keep.
pub async fn migrate_when_ready(pool: &PgPool, config: &DbConfig) -> anyhow::Result<()> {
    if config.run_migrations {
        use anyhow::Context;
        let direct = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(direct_options(pool, config)?);
        crate::startup::until_database_ready(&direct, "applying migrations", || async {
            migrate(&direct).await.context("applying migrations")
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

/// True when the error means "the database cannot be reached or is going away", which clients
/// should see as UNAVAILABLE and may retry; false for errors that point at a bug.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P0x: shutdown / cannot connect now; 53300: too many
            // connections; 40001/40P01 are retryable too (serialization failure, deadlock).
            code.starts_with("08") || code.starts_with("57P") || code == "53300" || code == "40001" || code == "40P01"
        }),
        _ => false,
    }
}

/// The name of the constraint a database error violated, if any.
pub fn violated_constraint(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}
