//! `<binary> migrate status | up | down [--to VERSION] [--yes]`, on one direct connection
//! (`DATABASE_DIRECT_URL`, else `DATABASE_URL`).

use crate::database::DbConfig;
use crate::database::migrations::{self, DownError};
use std::process::ExitCode;

/// What `migrate` does.
#[derive(Debug, clap::Subcommand)]
pub enum MigrateCommand {
    /// List each migration this binary carries as applied or pending; flag one applied that this
    /// binary does not know, whose script differs, or that failed. Exit code 1 if any is flagged.
    Status,
    /// Apply the pending migrations (waiting for another instance that is migrating: the same
    /// advisory lock as at start).
    Up,
    /// Revert applied migrations with their down scripts, newest first.
    Down {
        /// Revert down to this version, which stays applied (0: revert all). Default: one step.
        #[arg(long, value_name = "VERSION")]
        to: Option<i64>,
        /// Revert even when a down script drops tables, columns or rows.
        #[arg(long)]
        yes: bool,
    },
}

impl MigrateCommand {
    /// Runs it against `config`'s database; `name` prefixes messages.
    pub async fn run(self, name: &str, config: &DbConfig) -> ExitCode {
        let mut conn = match migrations::connect_direct(config).await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("{name} migrate: cannot connect to the database: {e}");
                return ExitCode::FAILURE;
            }
        };
        let outcome = match self {
            MigrateCommand::Status => status(&mut conn).await,
            MigrateCommand::Up => up(&mut conn).await,
            MigrateCommand::Down { to, yes } => down(&mut conn, to, yes).await,
        };
        match outcome {
            Ok(code) => code,
            Err(e) => {
                eprintln!("{name} migrate: {e}");
                ExitCode::FAILURE
            }
        }
    }
}

async fn status(conn: &mut sqlx::PgConnection) -> anyhow::Result<ExitCode> {
    let lines = migrations::status(conn).await?;
    for line in &lines {
        println!("{} {:<40} {}", line.version, line.description, line.state.label());
    }
    Ok(if lines.iter().all(|l| l.state.agrees()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn up(conn: &mut sqlx::PgConnection) -> anyhow::Result<ExitCode> {
    let before = migrations::status(conn).await?;
    crate::database::MIGRATOR.run(&mut *conn).await?;
    let after = migrations::status(conn).await?;
    let mut applied = 0;
    for line in &after {
        if before.iter().any(|b| b.version == line.version && b.state == migrations::State::Pending)
            && line.state == migrations::State::Applied
        {
            println!("applied {} {}", line.version, line.description);
            applied += 1;
        }
    }
    println!("{applied} migration(s) applied; the database is up to date");
    Ok(ExitCode::SUCCESS)
}

async fn down(conn: &mut sqlx::PgConnection, to: Option<i64>, yes: bool) -> anyhow::Result<ExitCode> {
    match migrations::down(conn, to, yes).await {
        Ok(reverted) => {
            for version in &reverted {
                println!("reverted {version}");
            }
            println!("{} migration(s) reverted", reverted.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (DownError::Database(_) | DownError::Migrate(_))) => Err(e.into()),
        Err(refused) => {
            eprintln!("refused: {refused}");
            Ok(ExitCode::FAILURE)
        }
    }
}
