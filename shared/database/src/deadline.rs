//! The deadline of the work under way, and how PostgreSQL learns that a caller stopped waiting.
//!
//! Whoever starts a unit of work with a deadline (the server, for a call whose client sent
//! `grpc-timeout`) runs it inside [`scope`]. The deadline reaches PostgreSQL without a round trip
//! of its own on each call:
//!
//! - In session mode every connection is set up once, when it opens ([`configure_session`]):
//!   `statement_timeout` = [`DEFAULT_STATEMENT_TIMEOUT`], the ceiling for any statement, and
//!   `client_connection_check_interval` = [`CLIENT_CHECK_INTERVAL`]. When a call ends while its
//!   statement still runs (its deadline passed and the server answered DEADLINE_EXCEEDED, or the
//!   client reset the stream), `Db` closes that connection instead of returning it to the pool,
//!   and PostgreSQL, checking the socket every `CLIENT_CHECK_INTERVAL` while a statement runs,
//!   cancels the statement and rolls its transaction back. The price is a new connection after
//!   each abandoned statement, which only calls that run out of time pay.
//! - In transaction mode (behind PgBouncer or Neon's pooler) a session setting would leak to other
//!   clients of the same server connection, so each transaction carries the time left as
//!   `SET LOCAL statement_timeout` in its BEGIN's round trip (`Db`), which that mode pays anyway.
//!
//! Outside a scope there is no deadline; statements get `DEFAULT_STATEMENT_TIMEOUT`.

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

/// The longest any statement may run (`statement_timeout` of every session-mode connection, and
/// the statement time of a call whose client set no deadline, and of background work).
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often PostgreSQL checks, while a statement runs, that its client is still connected
/// (`client_connection_check_interval`, PostgreSQL 14+, Linux): the most an abandoned statement
/// runs on after `Db` closed its connection.
pub const CLIENT_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Sets up a new session-mode connection: one simple-protocol round trip when it opens (sqlx's
/// `after_connect`), none per call. Through a pooler in session mode the settings stay on the
/// server connection for as long as the client holds it, which is this connection's life.
pub(super) async fn configure_session(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    let (timeout, check) = (DEFAULT_STATEMENT_TIMEOUT.as_millis(), CLIENT_CHECK_INTERVAL.as_millis());
    // Numbers of ours formatted into the statement: safe. PostgreSQL before 14 has no client
    // check and refuses the setting: there an abandoned statement runs until the timeout.
    let settings = match conn.server_version_num() {
        Some(version) if version < 140_000 => format!("SET statement_timeout = {timeout}"),
        _ => format!("SET statement_timeout = {timeout}; SET client_connection_check_interval = {check}"),
    };
    conn.execute(sqlx::AssertSqlSafe(settings)).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    #[test]
    fn outside_a_call_there_is_no_deadline() {
        // Background work, and calls whose client set no deadline: the 30 s ceiling applies.
        assert_eq!(super::remaining(), None);
    }
}
