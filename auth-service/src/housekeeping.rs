//! Deleting what no longer matters, every few minutes, so that no table only grows: ended
//! throttle windows (attempts on made-up accounts), expired refresh tokens, and sessions that were
//! revoked long ago or can no longer be refreshed.
//!
//! Only while the service has calls: an idle service sends no statement, so that a serverless
//! database can suspend (`database::activity`). What was left meanwhile goes at the first round
//! after the next call; nothing new accrues without calls.

use crate::store;
use std::time::Duration;
use todo_shared::database::Db;

/// How long revoked sessions are kept: past any verifier's revocation window (at most 30 days).
pub const KEEP_REVOKED_SESSIONS: Duration = Duration::from_secs(31 * 86_400);

pub async fn run_once(pool: &Db, throttle_window: Duration) -> Result<(), sqlx::Error> {
    store::throttle_prune(pool, throttle_window).await?;
    store::prune_sessions(pool, KEEP_REVOKED_SESSIONS).await
}

/// How often housekeeping runs while the service has calls.
pub const EVERY: Duration = Duration::from_secs(300);

/// Runs housekeeping every `EVERY` while the service has calls (deferred to the next call while
/// it has none), until aborted.
pub fn spawn(pool: Db, throttle_window: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            pool.activity().until_active().await;
            if let Err(e) = run_once(&pool, throttle_window).await {
                tracing::warn!(error = %e, "housekeeping failed; will retry in five minutes");
            }
        }
    })
}
