//! The task-service binary: with no subcommand, `task_service::serve` with configuration from
//! the environment; else one of the subcommands (`--help` lists them and every setting).

use clap::Parser;
use std::process::ExitCode;
use todo_shared::server::service_main::Binary;

/// Stores each user's tasks (todo.task.v1.TaskService), verifying auth-service's tokens locally.
/// With no subcommand it serves, configured by the environment variables listed below.
#[derive(Parser)]
#[command(
    name = "task-service",
    version = todo_shared::cli::version(env!("CARGO_PKG_VERSION")),
    after_help = todo_shared::cli::settings_help(&task_service::config::settings()),
)]
struct Cli {
    #[command(subcommand)]
    command: Option<todo_shared::cli::Common>,
}

/// mimalloc rather than glibc's malloc: less CPU per call (workspace Cargo.toml says how much).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = todo_shared::cli::parse();
    let binary = Binary {
        name: "task-service",
        service: task_service::SERVICE_NAME,
        addr_var: "TASK_ADDR",
        default_addr: task_service::config::DEFAULT_ADDR,
        load: task_service::TaskConfig::from_env,
        addr: |config| config.addr,
    };
    match cli.command {
        None => binary.main(task_service::serve).await,
        Some(command) => command.run(&binary).await,
    }
}
