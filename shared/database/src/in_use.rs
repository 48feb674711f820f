//! A pooled connection in use by a statement or a transaction, and what happens to it when its
//! holder goes away early.
//!
//! sqlx returns a dropped connection to the pool after a ping, and the ping waits for whatever
//! the connection was still doing: a statement abandoned by a call that ran out of time (its
//! future dropped mid-statement) would run on, up to the 30 s `statement_timeout`, holding its
//! pool slot. [`InUse`] closes such a connection instead, which PostgreSQL notices within
//! `deadline::CLIENT_CHECK_INTERVAL` and answers by cancelling the statement and rolling its
//! transaction back. A transaction left open without a statement in flight (an error path that
//! returned early) is rolled back before the connection goes back, as sqlx's own `Transaction`
//! does; that type cannot close its connection when dropped mid-statement, hence this one.

use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Executor, PgConnection, Postgres};

/// A connection taken from the pool for one statement (`Db`) or one transaction (`Tx`).
pub(crate) struct InUse {
    /// None only while being dropped.
    conn: Option<PoolConnection<Postgres>>,
    /// A statement was sent and its answer not yet read to the end.
    busy: bool,
    /// A transaction was begun and neither committed nor rolled back.
    open: bool,
}

impl InUse {
    /// `conn`, with no statement in flight and no transaction open.
    pub(crate) fn new(conn: PoolConnection<Postgres>) -> Self {
        Self { conn: Some(conn), busy: false, open: false }
    }

    /// The connection, for a statement about to be sent; call [`settle`](Self::settle) once its
    /// answer (rows or error) has been read. Dropped in between, the connection is closed.
    pub(crate) fn start(&mut self) -> &mut PgConnection {
        self.busy = true;
        self.conn.as_deref_mut().expect("a connection until dropped")
    }

    /// The statement started last has been answered: the connection may go back to the pool.
    pub(crate) fn settle(&mut self) {
        self.busy = false;
    }

    /// Runs `statement` (BEGIN, COMMIT or ROLLBACK; simple protocol, no parameters) and records
    /// whether a transaction is open after it: `open_after`.
    pub(crate) async fn transaction_control(&mut self, statement: String, open_after: bool) -> Result<(), sqlx::Error> {
        // Open from before BEGIN is sent (a BEGIN answered but not read leaves one open). Only a
        // statement that succeeded changes that: a COMMIT that failed may never have been sent
        // (sqlx first reads what an abandoned statement left), so the transaction counts as open
        // and is rolled back when dropped; a stray ROLLBACK only draws a warning.
        self.open = true;
        let done = self.start().execute(AssertSqlSafe(statement)).await;
        self.settle();
        if done.is_ok() {
            self.open = open_after;
        }
        done.map(|_| ())
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        if self.busy {
            // Closed rather than pinged back into the pool (see the module comment).
            conn.close_on_drop();
        } else if self.open {
            // sqlx returns connections from a spawned task as well; ROLLBACK first.
            tokio::spawn(async move {
                if conn.execute("ROLLBACK").await.is_err() {
                    // Never back into the pool with a transaction that may still be open.
                    conn.close_on_drop();
                }
            });
        }
    }
}
