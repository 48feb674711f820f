//! The binaries' command line (clap): what both share. Each binary's `main` defines its
//! `Parser` with [`version`] and [`settings_help`], flattens [`Common`] into its subcommands
//! and adds its own. With no subcommand the binary serves (`server::service_main`).
//!
//! Exit codes: 0 done; 1 the command failed (the database refused, a check failed, a lock was
//! held); 2 bad arguments (clap's usage line) or a bad setting (one line naming the variable).
//! Nothing printed holds a password, token or hash: the database URL is never printed.

pub mod migrate;
pub mod verify;

use crate::database::DbConfig;
use crate::env::{ProcessEnv, Setting};
use crate::server::service_main::Binary;
use std::process::ExitCode;

/// `<version> (commit <12 hex digits>)`, or `(commit unknown)` when built without git: what
/// `--version` prints after the binary's name. `package_version` is the binary's
/// `CARGO_PKG_VERSION`. Leaked (clap wants a `&'static str`): call it once per process.
pub fn version(package_version: &str) -> &'static str {
    format!("{package_version} (commit {})", env!("TODO_GIT_COMMIT")).leak()
}

/// The text `--help` ends with: every setting in `lists`, one entry each with its default and
/// meaning, in the order given.
pub fn settings_help(lists: &[&[Setting]]) -> String {
    let mut text = String::from(
        "Settings (environment variables; a bad value stops the binary with one line naming it, exit code 2):\n",
    );
    for setting in lists.iter().flat_map(|list| list.iter()) {
        text.push_str(&format!("  {}  [default: {}]\n      {}\n", setting.var, setting.default, setting.meaning));
    }
    text
}

/// `P::parse()`, except that every argument error ends with the usage line (clap leaves it out
/// of some, such as an invalid value): bad arguments print the error and the usage on standard
/// error and exit with code 2; `--help` and `--version` print and exit 0.
pub fn parse<P: clap::Parser>() -> P {
    P::try_parse().unwrap_or_else(|error| {
        if !error.use_stderr() {
            error.exit();
        }
        let text = error.render().to_string();
        eprint!("{text}");
        if !text.contains("Usage:") {
            // The usage of the subcommand the arguments name, as clap prints it for other errors.
            let mut command = P::command();
            command.build();
            for arg in std::env::args().skip(1).filter(|a| !a.starts_with('-')) {
                match command.find_subcommand(&arg) {
                    Some(sub) => command = sub.clone(),
                    None => break,
                }
            }
            eprintln!("\n{}", command.render_usage());
        }
        std::process::exit(2);
    })
}

/// The subcommands of both binaries.
#[derive(Debug, clap::Subcommand)]
pub enum Common {
    /// Ask the running instance (at its listen address) whether it is SERVING: exit code 0 if so.
    Healthcheck,
    /// Look at, apply or revert the migrations this binary carries.
    #[command(subcommand)]
    Migrate(migrate::MigrateCommand),
    /// Check the stored data: constraints, task feeds, sessions, signing keys, migrations.
    /// Exit code 0 only when every check passes.
    Verify,
}

impl Common {
    /// Runs the subcommand for `binary`.
    pub async fn run<C>(self, binary: &Binary<C>) -> ExitCode {
        match self {
            Common::Healthcheck => binary.healthcheck().await,
            Common::Migrate(command) => match db_config(binary.name) {
                Ok(config) => command.run(binary.name, &config).await,
                Err(code) => code,
            },
            Common::Verify => match db_config(binary.name) {
                Ok(config) => verify::run(binary.name, &config).await,
                Err(code) => code,
            },
        }
    }
}

/// The database settings from the process environment, or exit code 2 after one line naming
/// the bad variable.
pub fn db_config(name: &str) -> Result<DbConfig, ExitCode> {
    DbConfig::from_env(&ProcessEnv).map_err(|e| {
        eprintln!("{name}: configuration error: {e}");
        ExitCode::from(2)
    })
}
