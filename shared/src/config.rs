//! Reading typed settings from the environment, once, at start. A bad value is reported as one
//! line naming the variable and what is wrong with it.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A setting that could not be read; its `Display` is the one line the binaries print.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self { var, problem: problem.into() }
    }
}

/// Where the environment comes from: the process, or a fixed list in tests.
pub trait Env {
    fn get(&self, var: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok()
    }
}

impl Env for &[(&str, &str)] {
    fn get(&self, var: &str) -> Option<String> {
        self.iter().find(|(k, _)| *k == var).map(|(_, v)| v.to_string())
    }
}

/// Reads `var`, treating an empty value as unset.
pub fn optional(env: &dyn Env, var: &str) -> Option<String> {
    env.get(var).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Reads and parses `var`, or returns `default` when it is unset.
pub fn parse_or<T: FromStr>(env: &dyn Env, var: &'static str, default: T, expected: &str) -> Result<T, ConfigError> {
    match optional(env, var) {
        None => Ok(default),
        Some(raw) => raw.parse().map_err(|_| ConfigError::new(var, format!("expected {expected}, got {raw:?}"))),
    }
}

pub fn socket_addr(env: &dyn Env, var: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
    let expected = format!("an address such as {default}");
    parse_or(env, var, default.parse().expect("default addresses are valid"), &expected)
}

pub fn boolean(env: &dyn Env, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match optional(env, var).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
        Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
        Some(v) => Err(ConfigError::new(var, format!("expected true or false, got {v:?}"))),
    }
}

/// A whole number of seconds within `range`.
pub fn seconds(
    env: &dyn Env,
    var: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    let value: u64 = parse_or(env, var, default, "a whole number of seconds")?;
    if !range.contains(&value) {
        return Err(ConfigError::new(
            var,
            format!("must be from {} to {} seconds, got {value}", range.start(), range.end()),
        ));
    }
    Ok(Duration::from_secs(value))
}

/// Settings of the database connection, the same for both services.
#[derive(Clone)]
pub struct DbConfig {
    pub url: SecretString,
    /// A session-capable connection for what a transaction pooler cannot carry: migrations
    /// (session advisory lock) and LISTEN. `DATABASE_DIRECT_URL`; `url` when unset.
    pub direct_url: Option<SecretString>,
    pub max_connections: u32,
    /// `DB_POOL_MODE`: `session` (PostgreSQL itself, or a pooler in session mode) or
    /// `transaction` (a pooler in transaction mode; see `db::Db`).
    pub pool_mode: crate::db::PoolMode,
    pub run_migrations: bool,
}

impl DbConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let url = optional(env, "DATABASE_URL").ok_or_else(|| {
            ConfigError::new("DATABASE_URL", "is not set; give a PostgreSQL URL such as postgres://user:pass@host/db")
        })?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::new("DATABASE_URL", "must start with postgres:// or postgresql://"));
        }
        url.parse::<sqlx::postgres::PgConnectOptions>()
            .map_err(|_| ConfigError::new("DATABASE_URL", "is not a valid PostgreSQL URL"))?;
        let direct_url = optional(env, "DATABASE_DIRECT_URL");
        let valid = |d: &str| {
            (d.starts_with("postgres://") || d.starts_with("postgresql://"))
                && d.parse::<sqlx::postgres::PgConnectOptions>().is_ok()
        };
        if direct_url.as_deref().is_some_and(|d| !valid(d)) {
            return Err(ConfigError::new("DATABASE_DIRECT_URL", "must be a postgres:// URL"));
        }
        let max_connections: u32 = parse_or(env, "DB_MAX_CONNECTIONS", 10, "a whole number")?;
        if !(1..=1000).contains(&max_connections) {
            return Err(ConfigError::new("DB_MAX_CONNECTIONS", "must be from 1 to 1000"));
        }
        if optional(env, "DB_STATEMENT_CACHE").is_some() {
            return Err(ConfigError::new(
                "DB_STATEMENT_CACHE",
                "is no longer read: behind a pooler in transaction mode set DB_POOL_MODE=transaction",
            ));
        }
        let pool_mode = match optional(env, "DB_POOL_MODE").as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("session") => crate::db::PoolMode::Session,
            Some("transaction") => crate::db::PoolMode::Transaction,
            Some(_) => {
                return Err(ConfigError::new(
                    "DB_POOL_MODE",
                    "must be session (PostgreSQL itself or a pooler in session mode) or transaction \
                     (a pooler in transaction mode, such as PgBouncer or Neon's pooled endpoint)",
                ));
            }
        };
        if pool_mode == crate::db::PoolMode::Transaction && direct_url.is_none() {
            return Err(ConfigError::new(
                "DATABASE_DIRECT_URL",
                "must be set with DB_POOL_MODE=transaction: migrations (a session advisory lock) and \
                 LISTEN need a session, which a pooler in transaction mode does not keep",
            ));
        }
        Ok(Self {
            url: SecretString::from(url),
            direct_url: direct_url.map(SecretString::from),
            max_connections,
            pool_mode,
            run_migrations: boolean(env, "RUN_MIGRATIONS", true)?,
        })
    }

    /// The URL with any password replaced, fit for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose_secret())
    }
}

// Hand-written so that the URL's password never reaches a log line.
impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("url", &self.redacted_url())
            .field("direct_url", &self.direct_url.as_ref().map(|u| redact_url(u.expose_secret())))
            .field("max_connections", &self.max_connections)
            .field("pool_mode", &self.pool_mode)
            .field("run_migrations", &self.run_migrations)
            .finish()
    }
}

fn redact_url(url: &str) -> String {
    // scheme://user:password@host/... -> scheme://user:***@host/...
    let Some(scheme_end) = url.find("://") else {
        return "<unparsable url>".into();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.split('?').next().unwrap_or(url).to_string();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    let tail = &rest[at..];
    let tail = tail.split('?').next().unwrap_or(tail);
    format!("{}://{}:***{}", &url[..scheme_end], user, tail)
}

/// How long a stopping server lets in-flight calls finish (`SHUTDOWN_DRAIN_SECONDS`, default 10).
pub fn drain_timeout(env: &dyn Env) -> Result<Duration, ConfigError> {
    seconds(env, "SHUTDOWN_DRAIN_SECONDS", 10, 0..=600)
}

/// Token settings that issuer and verifiers must agree on.
#[derive(Clone, Debug)]
pub struct TokenConfig {
    pub issuer: String,
    pub audience: String,
}

impl TokenConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            issuer: optional(env, "TOKEN_ISSUER").unwrap_or_else(|| "todo-auth".into()),
            audience: optional(env, "TOKEN_AUDIENCE").unwrap_or_else(|| "todo".into()),
        })
    }
}

/// How a service is reached beyond plain gRPC: TLS (`TLS_CERT_FILE`, `TLS_KEY_FILE`) and the
/// Prometheus endpoint (`METRICS_ADDR`; unset: no metrics listener, and no counting either).
#[derive(Clone, Debug, Default)]
pub struct EndpointConfig {
    pub tls: Option<crate::tls::TlsFiles>,
    pub metrics_addr: Option<SocketAddr>,
}

impl EndpointConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let metrics_addr = match optional(env, "METRICS_ADDR") {
            None => None,
            Some(_) => Some(socket_addr(env, "METRICS_ADDR", "127.0.0.1:9101")?),
        };
        Ok(Self { tls: crate::tls::TlsFiles::from_env(env)?, metrics_addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db?sslmode=require"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn db_config_errors_name_the_variable() {
        let env: &[(&str, &str)] = &[];
        assert_eq!(DbConfig::from_env(&env).unwrap_err().var, "DATABASE_URL");
        let env: &[(&str, &str)] = &[("DATABASE_URL", "mysql://x")];
        assert_eq!(DbConfig::from_env(&env).unwrap_err().var, "DATABASE_URL");
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db"), ("DB_MAX_CONNECTIONS", "lots")];
        let err = DbConfig::from_env(&env).unwrap_err();
        assert_eq!(err.to_string(), "DB_MAX_CONNECTIONS: expected a whole number, got \"lots\"");
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db"), ("RUN_MIGRATIONS", "maybe")];
        assert_eq!(DbConfig::from_env(&env).unwrap_err().var, "RUN_MIGRATIONS");
    }

    #[test]
    fn pool_mode_transaction_needs_a_direct_url_and_the_old_switch_is_refused() {
        use crate::db::PoolMode;
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db")];
        assert_eq!(DbConfig::from_env(&env).unwrap().pool_mode, PoolMode::Session);
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db"), ("DB_POOL_MODE", "transaction")];
        assert_eq!(DbConfig::from_env(&env).unwrap_err().var, "DATABASE_DIRECT_URL");
        let env: &[(&str, &str)] = &[
            ("DATABASE_URL", "postgres://pooler/db"),
            ("DATABASE_DIRECT_URL", "postgres://h/db"),
            ("DB_POOL_MODE", "Transaction"),
        ];
        assert_eq!(DbConfig::from_env(&env).unwrap().pool_mode, PoolMode::Transaction);
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db"), ("DB_POOL_MODE", "statement")];
        assert_eq!(DbConfig::from_env(&env).unwrap_err().var, "DB_POOL_MODE");
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db"), ("DB_STATEMENT_CACHE", "false")];
        let err = DbConfig::from_env(&env).unwrap_err();
        assert!(err.to_string().contains("DB_POOL_MODE=transaction"), "{err}");
    }

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

    #[test]
    fn debug_hides_the_password() {
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://u:hunter2@h/db")];
        let cfg = DbConfig::from_env(&env).unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
