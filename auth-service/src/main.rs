//! The auth-service binary: `auth_service::serve` with configuration from the environment, plus
//! `healthcheck` and `retire-key <kid> [seconds]`.

use todo_shared::server::service_main::Binary;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("retire-key") {
        return auth_service::signing_key::retire_key_command(&args[2..]).await;
    }
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
