//! Waiting for the database at start: a service runs its database start-up steps (migrations,
//! key registration) again and again with capped exponential backoff until they succeed. It never
//! gives up because the database is late; it does stop on an error that waiting cannot fix (a
//! retired signing key, a migration that does not apply).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::futures::TaskLocalFuture;

/// The first wait after a failed attempt; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts: a database that comes back is used within this long.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one "does the database answer?" attempt may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long attempts must have failed before the database counts as unreachable (one quick
/// failure on a busy machine, or through a pooler, is retried within 100 ms).
const UNREACHABLE_AFTER: Duration = Duration::from_secs(1);

/// Told, from inside `until_database_ready`, that the database counts as unreachable.
pub type OnUnreachable = Arc<dyn Fn() + Send + Sync>;

tokio::task_local! {
    /// Who wants to hear that the start-up steps running in this task cannot reach the database.
    static ON_UNREACHABLE: OnUnreachable;
}

/// Runs `startup` so that `until_database_ready` inside it calls `on_unreachable` once its
/// attempts have failed for a second (the server then refuses the calls waiting for the start).
pub fn reporting_unreachable<F: Future>(
    on_unreachable: OnUnreachable,
    startup: F,
) -> TaskLocalFuture<OnUnreachable, F> {
    ON_UNREACHABLE.scope(on_unreachable, startup)
}

/// Runs `step` until it succeeds, waiting with capped exponential backoff while the database
/// cannot be reached. Before each attempt the database must answer a trivial query within
/// `PROBE_TIMEOUT`, so an attempt never hangs on a database that is away; the step itself is
/// not cut short (a long migration must not be interrupted). An error that does not mean
/// "unreachable" ends the wait and is returned.
pub async fn until_database_ready<T, F, Fut>(db: &super::handle::Db, what: &str, mut step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = FIRST_BACKOFF;
    let started = std::time::Instant::now();
    for attempt in 1u32.. {
        let error = match tokio::time::timeout(PROBE_TIMEOUT, sqlx::Executor::execute(db, "SELECT 1")).await {
            Err(_) => anyhow::anyhow!("the database did not answer within {PROBE_TIMEOUT:?}"),
            Ok(Err(e)) if super::classify::is_unavailable(&e) => anyhow::Error::new(e),
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context(format!("{what}: the database refused"))),
            Ok(Ok(_)) => match step().await {
                Ok(value) => {
                    if attempt > 1 {
                        tracing::info!(attempt, "{what}: done; the database is back");
                    }
                    return Ok(value);
                }
                Err(e) if is_unavailable(&e) => e,
                Err(e) => return Err(e),
            },
        };
        // Calls waiting for the start are refused only once attempts have failed for a moment:
        // one quick failure on a busy machine (or pooler) is retried within 100 ms.
        if started.elapsed() >= UNREACHABLE_AFTER {
            let _ = ON_UNREACHABLE.try_with(|report| report());
        }
        tracing::warn!(
            attempt,
            retry_in = ?backoff,
            error = %format!("{error:#}"),
            "{what}: the database is not reachable yet; health stays NOT_SERVING"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    unreachable!("the attempt counter does not run out")
}

/// True when `error` (anywhere in its chain) says the database could not be reached.
pub fn is_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return super::classify::is_unavailable(e);
        }
        match cause.downcast_ref::<sqlx::migrate::MigrateError>() {
            Some(sqlx::migrate::MigrateError::Execute(e) | sqlx::migrate::MigrateError::ExecuteMigration(e, _)) => {
                super::classify::is_unavailable(e)
            }
            _ => false,
        }
    })
}
