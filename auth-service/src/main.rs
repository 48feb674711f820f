//! The auth-service binary: configuration from the environment, then `auth_service::serve`.

use todo_shared::config::ProcessEnv;

#[tokio::main]
async fn main() {
    if let Err(e) = todo_shared::telemetry::init(&ProcessEnv) {
        eprintln!("auth-service: configuration error: {e}");
        std::process::exit(2);
    }
    let config = match auth_service::AuthConfig::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("auth-service: configuration error: {e}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("auth-service: cannot listen on {} (AUTH_ADDR): {e}", config.addr);
            std::process::exit(1);
        }
    };
    if let Err(e) = auth_service::serve(listener, config, todo_shared::grpc_server::shutdown_signal()).await {
        eprintln!("auth-service: {e:#}");
        std::process::exit(1);
    }
}
