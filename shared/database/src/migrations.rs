//! Looking at and undoing the embedded migrations ([`MIGRATOR`]) by hand, for the binaries'
//! `migrate` command: which are applied, and reverting the newest ones with their committed
//! `.down.sql` scripts under the same advisory lock sqlx's migrator takes.

use crate::MIGRATOR;
use sqlx::migrate::{Migrate, Migration};
use sqlx::{Connection, PgConnection};

/// Where one migration stands in a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Applied, with the checksum of the binary's script.
    Applied,
    /// Known to the binary, not applied.
    Pending,
    /// Applied, but from a script that differs from the binary's (edited after it ran).
    ChecksumDiffers,
    /// Applied in the database, unknown to this binary (a newer binary ran it).
    Unknown,
    /// Recorded as failed (`success = false`): it stopped half way and needs a hand.
    Failed,
}

impl State {
    /// How `migrate status` prints it.
    pub fn label(self) -> &'static str {
        match self {
            State::Applied => "applied",
            State::Pending => "pending",
            State::ChecksumDiffers => "applied, CHECKSUM DIFFERS from this binary's script",
            State::Unknown => "applied, UNKNOWN to this binary",
            State::Failed => "FAILED (recorded as not successful)",
        }
    }

    /// True when the database and the binary agree on this migration (applied or pending).
    pub fn agrees(self) -> bool {
        matches!(self, State::Applied | State::Pending)
    }
}

/// One line of `migrate status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The migration's version, e.g. `20260101000007`.
    pub version: i64,
    /// Its description (from the file name); empty for a migration unknown to the binary.
    pub description: String,
    /// Where it stands.
    pub state: State,
}

fn ups() -> impl Iterator<Item = &'static Migration> {
    MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration())
}

/// Every embedded migration and every migration recorded in the database, by version. A
/// database that was never migrated (no `_sqlx_migrations`) has every migration pending.
pub async fn status(conn: &mut PgConnection) -> Result<Vec<Status>, sqlx::Error> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(&mut *conn).await?;
    let applied: Vec<(i64, Vec<u8>, bool)> = if table_exists {
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await?
    } else {
        Vec::new()
    };
    let mut lines: Vec<Status> = ups()
        .map(|m| {
            let state = match applied.iter().find(|(v, _, _)| *v == m.version) {
                None => State::Pending,
                Some((_, _, false)) => State::Failed,
                Some((_, checksum, true)) if checksum[..] != m.checksum[..] => State::ChecksumDiffers,
                Some(_) => State::Applied,
            };
            Status { version: m.version, description: m.description.to_string(), state }
        })
        .collect();
    for (version, _, _) in &applied {
        if !lines.iter().any(|l| l.version == *version) {
            lines.push(Status { version: *version, description: String::new(), state: State::Unknown });
        }
    }
    lines.sort_by_key(|l| l.version);
    Ok(lines)
}

/// The advisory-lock key sqlx's migrator takes for `database_name` (sqlx-postgres'
/// `generate_lock_id`: the CRC-32 of the name times a constant), so that `migrate down` and
/// migrations at start exclude each other.
pub fn lock_id(database_name: &str) -> i64 {
    const CRC_IEEE: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC_IEEE.checksum(database_name.as_bytes()))
}

/// Takes the migrator's advisory lock on `conn` if no other session holds it; false if one
/// does (another instance is migrating). Held until [`unlock`] or the connection closes.
pub async fn try_lock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut *conn).await?;
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(lock_id(&name)).fetch_one(&mut *conn).await
}

/// Releases the lock [`try_lock`] took.
pub async fn unlock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&mut *conn).await?;
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(lock_id(&name)).execute(&mut *conn).await?;
    Ok(())
}

/// What a down script would destroy: each statement that drops a table or a column, deletes or
/// truncates, on one line; empty when it only drops what can be rebuilt (indexes, triggers,
/// functions).
pub fn data_dropped(sql: &str) -> Vec<String> {
    let code: String = sql.lines().map(|l| l.split("--").next().unwrap_or("")).collect::<Vec<_>>().join(" ");
    code.split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| {
            let upper = s.to_ascii_uppercase();
            ["DROP TABLE", "DROP COLUMN", "DELETE ", "TRUNCATE"].iter().any(|k| upper.contains(k))
        })
        .collect()
}

/// Why `down` did nothing, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DownError {
    /// Another session holds the migrator's advisory lock.
    #[error("another instance is migrating this database (it holds the migration lock); try again when it is done")]
    Locked,
    /// `to` is not the version of an applied migration (or 0, for all).
    #[error("--to {0}: not an applied migration of this binary (see `migrate status`; 0 reverts them all)")]
    BadTarget(i64),
    /// The database holds a migration this binary does not know: its down script is elsewhere.
    #[error("migration {0} is applied but unknown to this binary: revert it with the binary that applied it")]
    Unknown(i64),
    /// A script would drop data and `--yes` was not given.
    #[error("migration {version} ({description}) would drop data: {}; give --yes to revert it", .statements.join("; "))]
    WouldDropData {
        /// The migration.
        version: i64,
        /// Its description.
        description: String,
        /// The statements that drop data.
        statements: Vec<String>,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A down script failed (its transaction was rolled back).
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Reverts the applied migrations newer than `to` (all the way down when 0; only the newest when
/// None), newest first, each with its `.down.sql` in its own transaction, holding the migrator's
/// advisory lock throughout (refused with [`DownError::Locked`] when another session holds it).
/// Refuses before reverting anything when a script would drop data and `allow_data_loss` is
/// false. Returns the versions reverted.
pub async fn down(conn: &mut PgConnection, to: Option<i64>, allow_data_loss: bool) -> Result<Vec<i64>, DownError> {
    if !try_lock(conn).await? {
        return Err(DownError::Locked);
    }
    let outcome = down_locked(conn, to, allow_data_loss).await;
    unlock(conn).await?;
    outcome
}

async fn down_locked(conn: &mut PgConnection, to: Option<i64>, allow_data_loss: bool) -> Result<Vec<i64>, DownError> {
    let applied: Vec<i64> =
        status(conn).await?.into_iter().filter(|s| s.state != State::Pending).map(|s| s.version).collect();
    let to = match to {
        Some(to) if to != 0 && !applied.contains(&to) => return Err(DownError::BadTarget(to)),
        Some(to) => to,
        // One step: down to the one before the newest (0 when only one is applied).
        None => applied.iter().rev().nth(1).copied().unwrap_or(0),
    };
    let mut plan = Vec::new();
    for version in applied.iter().rev().filter(|v| **v > to) {
        let script = MIGRATOR
            .iter()
            .find(|m| m.version == *version && m.migration_type.is_down_migration())
            .ok_or(DownError::Unknown(*version))?;
        let statements = data_dropped(script.sql.as_str());
        if !statements.is_empty() && !allow_data_loss {
            return Err(DownError::WouldDropData {
                version: *version,
                description: script.description.to_string(),
                statements,
            });
        }
        plan.push(script);
    }
    let mut reverted = Vec::new();
    for script in plan {
        // sqlx's own revert: the script and the removal of its row in one transaction.
        conn.revert("_sqlx_migrations", script).await?;
        reverted.push(script.version);
    }
    Ok(reverted)
}

/// Connects once to `config`'s direct URL (`DATABASE_DIRECT_URL`, else `DATABASE_URL`): a session
/// that can hold an advisory lock.
pub async fn connect_direct(config: &crate::DbConfig) -> Result<PgConnection, sqlx::Error> {
    use secrecy::ExposeSecret;
    let url = config.direct_url.as_ref().unwrap_or(&config.url);
    let options: sqlx::postgres::PgConnectOptions = url.expose_secret().parse()?;
    PgConnection::connect_with(&options.application_name("todo-cli")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dropping_statements_are_found() {
        assert_eq!(
            data_dropped("DROP INDEX a;\n-- DROP TABLE in a comment\nDROP TRIGGER t ON x;"),
            Vec::<String>::new()
        );
        assert_eq!(
            data_dropped("DROP INDEX a;\nALTER TABLE s\n    DROP COLUMN c,\n    DROP COLUMN d;\ndrop table x;"),
            vec!["ALTER TABLE s DROP COLUMN c, DROP COLUMN d", "drop table x"]
        );
        for m in MIGRATOR.iter().filter(|m| m.migration_type.is_down_migration()) {
            let drops = !data_dropped(m.sql.as_str()).is_empty();
            // Migration 4 only drops triggers and functions.
            assert_eq!(drops, m.version != 20260101000004, "{}", m.version);
        }
    }
}
