//! Telling an outage from a bug: which database errors a client should see as UNAVAILABLE and may
//! retry, which mean the call's deadline ran out, and which constraint a write violated.

/// True when the error means "the database cannot be reached or is going away", which clients
/// should see as UNAVAILABLE and may retry; false for errors that point at a bug.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // Bytes that are not PostgreSQL's protocol: a connection cut short. A proxy with no server
        // behind it (HAProxy during a failover, a pooler whose server is gone) accepts and closes
        // at once, and sqlx reads "0x00" as the answer to its SSLRequest
        // (tests/unavailable.rs); the connection is useless, and a retry may find a server.
        sqlx::Error::Protocol(_) => true,
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
