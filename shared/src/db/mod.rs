//! The PostgreSQL pool, the embedded migrations, and telling an outage from a bug.

mod handle;

pub use handle::{Db, PoolMode, Tx};

use crate::config::DbConfig;
use secrecy::ExposeSecret;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::time::Duration;

/// Every migration in `migrations/`, embedded at compile time so the binaries carry them.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

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
        // No liveness test on an idle connection: in session mode the SET below is the same
        // round trip; in transaction mode the BEGIN of each statement is.
        .test_before_acquire(false);
    let pool = match config.pool_mode {
        // Each call's connection gets a statement_timeout of the time its client has left, so
        // PostgreSQL cancels a statement the client no longer waits for.
        PoolMode::Session => pool
            .before_acquire(|conn, _| Box::pin(async move { set_statement_timeout(conn).await.map(|()| true) }))
            .after_connect(|conn, _| Box::pin(set_statement_timeout(conn))),
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
/// takes (see `startup`). They run on a direct connection: sqlx holds a session advisory lock
/// across them, which a pooler in transaction mode would not keep.
pub async fn migrate_when_ready(db: &Db, config: &DbConfig) -> anyhow::Result<()> {
    if config.run_migrations {
        use anyhow::Context;
        let direct = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(direct_options(db, config)?);
        let direct = Db::new(direct, PoolMode::Session);
        crate::startup::until_database_ready(&direct, "applying migrations", || async {
            migrate(direct.pool()).await.context("applying migrations")
        })
        .await?;
        direct.close().await;
    }
    Ok(())
}

/// The statement timeout of a call whose client set no deadline (and of background work).
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The statement_timeout for statements run now, in milliseconds: the time the call has left.
fn statement_timeout_millis() -> u128 {
    let timeout = crate::call_limits::remaining().unwrap_or(DEFAULT_STATEMENT_TIMEOUT);
    // 0 would mean "no limit"; a call already out of time gets the shortest there is.
    timeout.as_millis().clamp(1, DEFAULT_STATEMENT_TIMEOUT.as_millis())
}

async fn set_statement_timeout(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    let millis = statement_timeout_millis();
    // A number we made, formatted into the statement: safe. Simple protocol, one round trip.
    conn.execute(sqlx::AssertSqlSafe(format!("SET statement_timeout = {millis}"))).await.map(|_| ())
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

/// True when PostgreSQL cancelled the statement for running past its statement_timeout (the
/// call's deadline).
pub fn is_deadline(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
}

/// The name of the constraint a database error violated, if any.
pub fn violated_constraint(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_deadline_statements_get_30_seconds() {
        // Outside any call (no grpc-timeout in scope): background work, and calls with no deadline.
        assert_eq!(super::statement_timeout_millis(), 30_000);
    }
}
