//! The deadline of the work under way, which the database part turns into `statement_timeout`
//! so that PostgreSQL cancels a statement whose caller has stopped waiting.
//!
//! Whoever starts a unit of work with a deadline (the server, for a call whose client sent
//! `grpc-timeout`) runs it inside [`scope`]; every connection the work takes then gets a
//! statement_timeout of the time left (`database::pool`, `database::Db`). Outside a scope there
//! is no deadline, and statements get `DEFAULT_STATEMENT_TIMEOUT`.

use std::future::Future;
use std::time::{Duration, Instant};
use tokio::task::futures::TaskLocalFuture;

tokio::task_local! {
    /// When the current work's caller stops waiting, if it said.
    static DEADLINE: Option<Instant>;
}

/// Runs `work` with `deadline` (None: the caller set none) as the deadline of every statement it
/// sends. Not boxed: the returned future is `work` with the deadline attached.
pub fn scope<F: Future>(deadline: Option<Instant>, work: F) -> TaskLocalFuture<Option<Instant>, F> {
    DEADLINE.scope(deadline, work)
}

/// The time the current work has left, if its caller set a deadline (None outside a scope).
pub fn remaining() -> Option<Duration> {
    DEADLINE.try_with(|deadline| deadline.map(|d| d.saturating_duration_since(Instant::now()))).ok().flatten()
}

/// The statement timeout of a call whose client set no deadline (and of background work).
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The statement_timeout for statements run now, in milliseconds: the time the call has left.
fn statement_timeout_millis() -> u128 {
    let timeout = remaining().unwrap_or(DEFAULT_STATEMENT_TIMEOUT);
    // 0 would mean "no limit"; a call already out of time gets the shortest there is.
    timeout.as_millis().clamp(1, DEFAULT_STATEMENT_TIMEOUT.as_millis())
}

pub(super) async fn set_statement_timeout(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    let millis = statement_timeout_millis();
    // A number we made, formatted into the statement: safe. Simple protocol, one round trip.
    conn.execute(sqlx::AssertSqlSafe(format!("SET statement_timeout = {millis}"))).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_a_deadline_statements_get_30_seconds() {
        // Outside any call (no grpc-timeout in scope): background work, and calls with no deadline.
        assert_eq!(super::statement_timeout_millis(), 30_000);
    }
}
