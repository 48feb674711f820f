//! The task-service binary: `task_service::serve` with configuration from the environment.

use todo_shared::server::service_main::Binary;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    Binary {
        name: "task-service",
        service: task_service::SERVICE_NAME,
        addr_var: "TASK_ADDR",
        default_addr: task_service::config::DEFAULT_ADDR,
        load: task_service::TaskConfig::from_env,
        addr: |config| config.addr,
    }
    .main(task_service::serve)
    .await
}
