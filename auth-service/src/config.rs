//! auth-service settings, read once from the environment.

use crate::throttle::ThrottleConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use todo_shared::access::TokenConfig;
use todo_shared::database::DbConfig;
use todo_shared::env::{ConfigError, Env, Setting, optional, parse_or, seconds, socket_addr};
use todo_shared::server::endpoint::{EndpointConfig, drain_timeout};
use todo_shared::server::grpc_web::CorsOrigins;

/// Where the service listens unless AUTH_ADDR says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub addr: SocketAddr,
    pub db: DbConfig,
    pub token: TokenConfig,
    /// How long a graceful stop waits for in-flight calls.
    pub drain_timeout: Duration,
    /// PEM (PKCS#8) Ed25519 private key; None means a fresh key per start (development).
    pub signing_key_file: Option<PathBuf>,
    pub refresh_token_ttl: Duration,
    /// How long a session may last from its login whatever its use
    /// (`SESSION_MAX_LIFETIME_SECONDS`, default 30 days; ASVS 5.0 V7.3.2).
    pub session_max_lifetime: Duration,
    /// How long a session may go without a refresh (`SESSION_IDLE_TIMEOUT_SECONDS`, default 7
    /// days, at most the lifetime; ASVS 5.0 V7.3.1).
    pub session_idle_timeout: Duration,
    /// How long a spent refresh token may still be exchanged, for concurrent refreshes.
    pub refresh_reuse_grace: Duration,
    pub bcrypt_cost: u32,
    pub throttle: ThrottleConfig,
    /// Browser origins allowed to call over gRPC-Web (CORS_ALLOWED_ORIGINS).
    pub cors_allowed_origins: CorsOrigins,
    /// TLS and the metrics listener.
    pub endpoint: EndpointConfig,
}

/// The variables `AuthConfig::from_env` reads itself (the rest come from the shared parsers;
/// see [`settings`]).
pub const SETTINGS: &[Setting] = &[
    Setting { var: "AUTH_ADDR", default: DEFAULT_ADDR, meaning: "listen address" },
    Setting {
        var: "SIGNING_KEY_FILE",
        default: "(unset: a fresh key per start, for development)",
        meaning: "PKCS#8 PEM Ed25519 private key, mode 600",
    },
    Setting {
        var: "REFRESH_TOKEN_TTL_SECONDS",
        default: "2592000",
        meaning: "refresh-token lifetime, 30 days (60 s to 1 year)",
    },
    Setting {
        var: "SESSION_MAX_LIFETIME_SECONDS",
        default: "2592000",
        meaning: "a session's absolute lifetime from its login, 30 days (300 s to 1 year)",
    },
    Setting {
        var: "SESSION_IDLE_TIMEOUT_SECONDS",
        default: "604800",
        meaning: "a session unused this long ends, 7 days (60 s to the lifetime)",
    },
    Setting {
        var: "REFRESH_REUSE_GRACE_SECONDS",
        default: "5",
        meaning: "how long a spent refresh token may still be exchanged (concurrent refreshes), 0 to 60",
    },
    Setting { var: "BCRYPT_COST", default: "12", meaning: "bcrypt cost, 4 to 31" },
    Setting {
        var: "LOGIN_MAX_FAILURES_PER_ACCOUNT",
        default: "5",
        meaning: "failed password checks per account and window before TOO_MANY_ATTEMPTS",
    },
    Setting {
        var: "LOGIN_MAX_FAILURES_PER_ADDRESS",
        default: "100",
        meaning: "the same per client address (IPv6: per /64)",
    },
    Setting {
        var: "SIGNUP_MAX_PER_ADDRESS",
        default: "20",
        meaning: "SignUps per client address (IPv6: per /64) per throttle window",
    },
    Setting { var: "LOGIN_THROTTLE_WINDOW_SECONDS", default: "900", meaning: "the throttle window" },
];

/// Every setting the auth-service binary reads, as `--help` lists them: its own, then the
/// shared parsers' (database, tokens, endpoint, CORS), then logging and `healthcheck`'s.
pub fn settings() -> Vec<&'static [Setting]> {
    let [logging, healthcheck] = todo_shared::server::service_main::PROCESS_SETTINGS;
    vec![
        SETTINGS,
        DbConfig::SETTINGS,
        TokenConfig::SETTINGS,
        todo_shared::server::endpoint::SETTINGS,
        CorsOrigins::SETTINGS,
        logging,
        healthcheck,
    ]
}

impl AuthConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let bcrypt_cost: u32 = parse_or(env, "BCRYPT_COST", 12, "a whole number")?;
        if !(4..=31).contains(&bcrypt_cost) {
            return Err(ConfigError::new("BCRYPT_COST", format!("must be from 4 to 31, got {bcrypt_cost}")));
        }
        let signing_key_file = optional(env, "SIGNING_KEY_FILE").map(PathBuf::from);
        if let Some(path) = &signing_key_file
            && !path.is_file()
        {
            return Err(ConfigError::new("SIGNING_KEY_FILE", format!("{} is not a readable file", path.display())));
        }
        let session_max_lifetime = seconds(env, "SESSION_MAX_LIFETIME_SECONDS", 30 * 86_400, 300..=365 * 86_400)?;
        let session_idle_timeout = seconds(env, "SESSION_IDLE_TIMEOUT_SECONDS", 7 * 86_400, 60..=365 * 86_400)?;
        if session_idle_timeout > session_max_lifetime {
            return Err(ConfigError::new(
                "SESSION_IDLE_TIMEOUT_SECONDS",
                format!(
                    "must be at most SESSION_MAX_LIFETIME_SECONDS ({}), got {}",
                    session_max_lifetime.as_secs(),
                    session_idle_timeout.as_secs()
                ),
            ));
        }
        Ok(Self {
            addr: socket_addr(env, "AUTH_ADDR", DEFAULT_ADDR)?,
            db: DbConfig::from_env(env)?,
            token: TokenConfig::from_env(env)?,
            drain_timeout: drain_timeout(env)?,
            signing_key_file,
            refresh_token_ttl: seconds(env, "REFRESH_TOKEN_TTL_SECONDS", 30 * 86_400, 60..=365 * 86_400)?,
            session_max_lifetime,
            session_idle_timeout,
            refresh_reuse_grace: seconds(env, "REFRESH_REUSE_GRACE_SECONDS", 5, 0..=60)?,
            bcrypt_cost,
            throttle: ThrottleConfig {
                max_failures_per_account: positive(env, "LOGIN_MAX_FAILURES_PER_ACCOUNT", 5)?,
                max_failures_per_address: positive(env, "LOGIN_MAX_FAILURES_PER_ADDRESS", 100)?,
                max_sign_ups_per_address: positive(env, "SIGNUP_MAX_PER_ADDRESS", 20)?,
                window: seconds(env, "LOGIN_THROTTLE_WINDOW_SECONDS", 900, 1..=86_400)?,
            },
            cors_allowed_origins: CorsOrigins::from_env(env)?,
            endpoint: EndpointConfig::from_env(env)?,
        })
    }
}

fn positive(env: &dyn Env, var: &'static str, default: i32) -> Result<i32, ConfigError> {
    let value: i32 = parse_or(env, var, default, "a whole number")?;
    if value < 1 {
        return Err(ConfigError::new(var, format!("must be at least 1, got {value}")));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db")];
        let c = AuthConfig::from_env(&env).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.token.access_token_ttl, Duration::from_secs(900));
        assert_eq!(c.refresh_token_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(c.bcrypt_cost, 12);
        assert_eq!(c.refresh_reuse_grace, Duration::from_secs(5));
        assert_eq!(c.session_max_lifetime, Duration::from_secs(30 * 86_400));
        assert_eq!(c.session_idle_timeout, Duration::from_secs(7 * 86_400));
        assert_eq!(c.throttle.max_failures_per_account, 5);
        assert_eq!(c.throttle.max_failures_per_address, 100);
        assert_eq!(c.throttle.window, Duration::from_secs(900));
        assert!(c.db.run_migrations);
    }

    /// `--help` lists exactly what is read: a new variable without its line (or a line left
    /// behind) fails here.
    #[test]
    fn the_settings_list_names_every_variable_read() {
        let env = todo_shared::env::Recording::new(&[("DATABASE_URL", "postgres://h/db")]);
        AuthConfig::from_env(&env).unwrap();
        // With TLS on, `healthcheck` reads its own two.
        let tls = todo_shared::env::Recording::new(&[("TLS_CERT_FILE", "/etc/hostname")]);
        todo_shared::server::service_main::read_process_settings(&tls).unwrap();
        let read: std::collections::BTreeSet<String> = env.asked().into_iter().chain(tls.asked()).collect();
        let listed: std::collections::BTreeSet<String> =
            settings().iter().flat_map(|list| list.iter()).map(|s| s.var.to_owned()).collect();
        assert_eq!(read, listed);
        assert_eq!(listed.len(), settings().iter().map(|l| l.len()).sum::<usize>(), "no variable listed twice");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("BCRYPT_COST", "3"),
            ("BCRYPT_COST", "twelve"),
            ("AUTH_ADDR", "localhost"),
            ("ACCESS_TOKEN_TTL_SECONDS", "0"),
            ("SIGNING_KEY_FILE", "/nonexistent/key.pem"),
            ("METRICS_ADDR", "anywhere"),
            ("SESSION_MAX_LIFETIME_SECONDS", "10"),
            // Longer than the default lifetime (30 days).
            ("SESSION_IDLE_TIMEOUT_SECONDS", "3000000"),
        ] {
            let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db"), (var, value)];
            assert_eq!(AuthConfig::from_env(&env).unwrap_err().var, var, "{var}={value}");
        }
    }
}
