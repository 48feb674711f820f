//! The auth-service binary: with no subcommand, `auth_service::serve` with configuration from
//! the environment; else one of the subcommands (`--help` lists them and every setting).

use clap::{Parser, Subcommand};
use std::process::ExitCode;
use todo_shared::server::service_main::Binary;

/// Signs users up, logs them in, issues and revokes tokens (todo.auth.v1.AuthService). With no
/// subcommand it serves, configured by the environment variables listed below.
#[derive(Parser)]
#[command(
    name = "auth-service",
    version = todo_shared::cli::version(env!("CARGO_PKG_VERSION")),
    after_help = todo_shared::cli::settings_help(&auth_service::config::settings()),
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Common(todo_shared::cli::Common),
    /// Stop the signing key KID verifying after SECONDS (default 0): the last step of a key
    /// rotation, once no instance signs with it.
    RetireKey {
        /// The key's id (the `kid` of its tokens; GetJwks lists them).
        kid: String,
        /// Seconds until it stops verifying, to let its last tokens expire.
        #[arg(default_value_t = 0)]
        seconds: u64,
    },
    /// Look at or end one account's sessions.
    #[command(subcommand)]
    Sessions(auth_service::sessions_cli::SessionsCommand),
}

/// mimalloc rather than glibc's malloc: less CPU per call (workspace Cargo.toml says how much).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = todo_shared::cli::parse();
    let binary = Binary {
        name: "auth-service",
        service: auth_service::SERVICE_NAME,
        addr_var: "AUTH_ADDR",
        default_addr: auth_service::config::DEFAULT_ADDR,
        load: auth_service::AuthConfig::from_env,
        addr: |config| config.addr,
    };
    match cli.command {
        None => binary.main(auth_service::serve).await,
        Some(Command::Common(command)) => command.run(&binary).await,
        Some(Command::RetireKey { kid, seconds }) => auth_service::signing_key::retire_key_command(&kid, seconds).await,
        Some(Command::Sessions(command)) => match todo_shared::cli::db_config(binary.name) {
            Ok(config) => command.run(&config).await,
            Err(code) => code,
        },
    }
}
