//! The database settings (`DATABASE_URL`, `DATABASE_DIRECT_URL`, `DB_MAX_CONNECTIONS`,
//! `DB_POOL_MODE`, `RUN_MIGRATIONS`), read once at start, and safe to log.

use super::PoolMode;
use crate::env::{ConfigError, Env, Setting, boolean, optional, parse_or};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// Settings of the database connection, the same for both services.
#[derive(Clone)]
pub struct DbConfig {
    /// `DATABASE_URL`: where the pool connects (PostgreSQL, or a pooler in front of it).
    pub url: SecretString,
    /// A session-capable connection for what a transaction pooler cannot carry: migrations
    /// (session advisory lock) and LISTEN. `DATABASE_DIRECT_URL`; `url` when unset.
    pub direct_url: Option<SecretString>,
    /// `DB_MAX_CONNECTIONS`: the pool's size, 1 to 1000 (default 10).
    pub max_connections: u32,
    /// `DB_POOL_MODE`: `session` (PostgreSQL itself, or a pooler in session mode) or
    /// `transaction` (a pooler in transaction mode; see `database::Db`).
    pub pool_mode: PoolMode,
    /// `RUN_MIGRATIONS`: apply pending migrations at start (default true).
    pub run_migrations: bool,
}

impl DbConfig {
    /// Every variable `from_env` reads, for `--help`.
    pub const SETTINGS: &[Setting] = &[
        Setting {
            var: "DATABASE_URL",
            default: "(required)",
            meaning: "PostgreSQL URL, e.g. postgres://user:pass@host/db?sslmode=verify-full",
        },
        Setting {
            var: "DATABASE_DIRECT_URL",
            default: "(unset: DATABASE_URL)",
            meaning: "a direct, session-capable URL for migrations (advisory lock) and LISTEN, when DATABASE_URL is a pooler",
        },
        Setting { var: "DB_MAX_CONNECTIONS", default: "10", meaning: "pool size, 1 to 1000" },
        Setting {
            var: "DB_POOL_MODE",
            default: "session",
            meaning: "session (PostgreSQL, or a pooler in session mode) or transaction (a pooler in transaction mode; needs DATABASE_DIRECT_URL)",
        },
        Setting {
            var: "RUN_MIGRATIONS",
            default: "true",
            meaning: "apply pending migrations at start (an advisory lock serialises instances)",
        },
        Setting {
            var: "DB_STATEMENT_CACHE",
            default: "(unset)",
            meaning: "retired: setting it stops the start; use DB_POOL_MODE=transaction behind a transaction pooler",
        },
    ];

    /// The database settings from `env`; an error naming the variable when one is missing or
    /// wrong (`DATABASE_URL` is required; `DB_POOL_MODE=transaction` requires `DATABASE_DIRECT_URL`).
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
            None | Some("session") => PoolMode::Session,
            Some("transaction") => PoolMode::Transaction,
            Some(_) => {
                return Err(ConfigError::new(
                    "DB_POOL_MODE",
                    "must be session (PostgreSQL itself or a pooler in session mode) or transaction \
                     (a pooler in transaction mode, such as PgBouncer or Neon's pooled endpoint)",
                ));
            }
        };
        if pool_mode == PoolMode::Transaction && direct_url.is_none() {
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

/// `url` with its password replaced by `***` and its query and fragment dropped (a query may
/// carry `password=` or key paths), fit for logs; `<unparsable url>` if it is not a URL.
fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<unparsable url>".into();
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have a user (no host), which have no password either.
        let _ = parsed.set_password(Some("***"));
    }
    parsed.set_query(None);
    parsed.set_fragment(None);
    parsed.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db?sslmode=require"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("postgresql://u:p%40ss@h/db?password=x#y"), "postgresql://u:***@h/db");
        assert_eq!(redact_url("not a url"), "<unparsable url>");
        // An unescaped `@` in the password: the userinfo ends at the last `@`, as for the driver.
        assert_eq!(redact_url("postgres://u:p@ss@host/db"), "postgres://u:***@host/db");
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
    fn debug_hides_the_password() {
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://u:hunter2@h/db")];
        let cfg = DbConfig::from_env(&env).unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
