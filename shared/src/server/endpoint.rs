//! How a service is reached and stopped: TLS and the metrics listener (`EndpointConfig`), and
//! the drain time of a graceful stop.

use crate::env::{ConfigError, Env, optional, seconds, socket_addr};
use std::net::SocketAddr;
use std::time::Duration;

/// Every variable `drain_timeout` and `EndpointConfig::from_env` read, for `--help`.
pub const SETTINGS: &[crate::env::Setting] = &[
    crate::env::Setting {
        var: "SHUTDOWN_DRAIN_SECONDS",
        default: "10",
        meaning: "on SIGINT/SIGTERM, how long calls in flight may finish before they are cut",
    },
    crate::env::Setting {
        var: "METRICS_ADDR",
        default: "(unset: no metrics listener)",
        meaning: "where /metrics (Prometheus) is served, e.g. 127.0.0.1:9101",
    },
    crate::env::Setting {
        var: "TLS_CERT_FILE",
        default: "(unset: plaintext h2c)",
        meaning: "PEM certificate chain for gRPC over TLS (with TLS_KEY_FILE)",
    },
    crate::env::Setting {
        var: "TLS_KEY_FILE",
        default: "(unset: plaintext h2c)",
        meaning: "PEM private key for gRPC over TLS (with TLS_CERT_FILE)",
    },
    crate::env::Setting {
        var: "MAX_CONNECTIONS",
        default: "4096",
        meaning: "connections open at once on one instance; one more is closed at once",
    },
    crate::env::Setting {
        var: "HANDSHAKE_TIMEOUT_SECONDS",
        default: "10",
        meaning: "from accept to the end of the TLS handshake and the HTTP preface, 1 to 300 s",
    },
];

/// How long a stopping server lets in-flight calls finish (`SHUTDOWN_DRAIN_SECONDS`, default 10).
pub fn drain_timeout(env: &dyn Env) -> Result<Duration, ConfigError> {
    seconds(env, "SHUTDOWN_DRAIN_SECONDS", 10, 0..=600)
}

/// How a service is reached beyond plain gRPC: TLS (`TLS_CERT_FILE`, `TLS_KEY_FILE`), the
/// connection limits (`MAX_CONNECTIONS`, `HANDSHAKE_TIMEOUT_SECONDS`) and the Prometheus
/// endpoint (`METRICS_ADDR`; unset: no metrics listener, and no counting either).
#[derive(Clone, Debug, Default)]
pub struct EndpointConfig {
    /// `TLS_CERT_FILE` and `TLS_KEY_FILE`; None: plaintext h2c.
    pub tls: Option<super::tls::TlsFiles>,
    /// `METRICS_ADDR`; None: no metrics listener.
    pub metrics_addr: Option<SocketAddr>,
    /// `MAX_CONNECTIONS` and `HANDSHAKE_TIMEOUT_SECONDS`.
    pub connections: super::connections::ConnectionLimits,
}

impl EndpointConfig {
    /// TLS, connection and metrics settings from `env`; an error naming the variable when one is wrong.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let metrics_addr = match optional(env, "METRICS_ADDR") {
            None => None,
            Some(_) => Some(socket_addr(env, "METRICS_ADDR", "127.0.0.1:9101")?),
        };
        Ok(Self {
            tls: super::tls::TlsFiles::from_env(env)?,
            metrics_addr,
            connections: super::connections::ConnectionLimits::from_env(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_settings() {
        let env: &[(&str, &str)] = &[];
        let endpoint = EndpointConfig::from_env(&env).unwrap();
        assert!(endpoint.metrics_addr.is_none() && endpoint.tls.is_none());
        let env: &[(&str, &str)] = &[("METRICS_ADDR", "0.0.0.0:9101")];
        assert_eq!(EndpointConfig::from_env(&env).unwrap().metrics_addr, Some("0.0.0.0:9101".parse().unwrap()));
        let env: &[(&str, &str)] = &[("METRICS_ADDR", "9101")];
        let err = EndpointConfig::from_env(&env).unwrap_err();
        assert_eq!(err.to_string(), "METRICS_ADDR: expected an address such as 127.0.0.1:9101, got \"9101\"");
    }
}
