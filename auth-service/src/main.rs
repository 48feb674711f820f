//! The auth-service binary: `auth_service::serve` with configuration from the environment.

use todo_shared::service_main::Binary;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    Binary {
        name: "auth-service",
        service: auth_service::SERVICE_NAME,
        addr_var: "AUTH_ADDR",
        default_addr: auth_service::config::DEFAULT_ADDR,
        load: auth_service::AuthConfig::from_env,
        addr: |config| config.addr,
    }
    .main(auth_service::serve)
    .await
}
