//! task-service settings, read once from the environment.

use std::net::SocketAddr;
use std::time::Duration;
use todo_shared::config::{
    ConfigError, DbConfig, EndpointConfig, Env, TokenConfig, drain_timeout, seconds, socket_addr,
};

/// Where the service listens unless TASK_ADDR says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50052";

#[derive(Debug, Clone)]
pub struct TaskConfig {
    pub addr: SocketAddr,
    pub db: DbConfig,
    pub token: TokenConfig,
    /// How long a graceful stop waits for in-flight calls.
    pub drain_timeout: Duration,
    /// How long revoked sessions are remembered: at least auth-service's access-token lifetime.
    pub revocation_window: Duration,
    /// TLS and the metrics listener.
    pub endpoint: EndpointConfig,
}

impl TaskConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            addr: socket_addr(env, "TASK_ADDR", DEFAULT_ADDR)?,
            db: DbConfig::from_env(env)?,
            token: TokenConfig::from_env(env)?,
            drain_timeout: drain_timeout(env)?,
            revocation_window: seconds(env, "REVOCATION_WINDOW_SECONDS", 86_400, 60..=30 * 86_400)?,
            endpoint: EndpointConfig::from_env(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db")];
        assert_eq!(TaskConfig::from_env(&env).unwrap().addr.to_string(), "127.0.0.1:50052");
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db"), ("TASK_ADDR", "nowhere")];
        assert_eq!(TaskConfig::from_env(&env).unwrap_err().var, "TASK_ADDR");
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db"), ("TLS_KEY_FILE", "/etc/hostname")];
        assert_eq!(
            TaskConfig::from_env(&env).unwrap_err().to_string(),
            "TLS_CERT_FILE: is not set but TLS_KEY_FILE is: set both for TLS, or neither"
        );
    }
}
