//! Deleting what no longer matters, once a minute, so that no table only grows: ended throttle
//! windows (attempts on made-up accounts), expired refresh tokens, and sessions that were revoked
//! long ago or can no longer be refreshed.

use crate::store;
use std::time::Duration;
use todo_shared::database::Db;

/// How long revoked sessions are kept: past any verifier's revocation window (at most 30 days).
pub const KEEP_REVOKED_SESSIONS: Duration = Duration::from_secs(31 * 86_400);

pub async fn run_once(pool: &Db, throttle_window: Duration) -> Result<(), sqlx::Error> {
    store::throttle_prune(pool, throttle_window).await?;
    store::prune_sessions(pool, KEEP_REVOKED_SESSIONS).await
}

pub fn spawn(pool: Db, throttle_window: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            if let Err(e) = run_once(&pool, throttle_window).await {
                tracing::warn!(error = %e, "housekeeping failed; will retry in a minute");
            }
        }
    })
}
