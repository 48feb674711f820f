//! The task-service binary: configuration from the environment, then `task_service::serve`.

use todo_shared::config::ProcessEnv;

#[tokio::main]
async fn main() {
    if let Err(e) = todo_shared::telemetry::init(&ProcessEnv) {
        eprintln!("task-service: configuration error: {e}");
        std::process::exit(2);
    }
    let config = match task_service::TaskConfig::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("task-service: configuration error: {e}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("task-service: cannot listen on {} (TASK_ADDR): {e}", config.addr);
            std::process::exit(1);
        }
    };
    if let Err(e) = task_service::serve(listener, config, todo_shared::grpc_server::shutdown_signal()).await {
        eprintln!("task-service: {e:#}");
        std::process::exit(1);
    }
}
