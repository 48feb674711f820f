//! Logging: `RUST_LOG` filters (default `info`, sqlx notices at `warn`), `LOG_FORMAT` is `text` or `json`.

use crate::env::{ConfigError, Env, optional};
use tracing_subscriber::EnvFilter;

/// `LOG_FORMAT`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` (`text`, the default, or `json`).
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        match optional(env, "LOG_FORMAT").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(ConfigError::new("LOG_FORMAT", format!("expected text or json, got {other:?}"))),
        }
    }
}

/// Every variable `init` reads, for `--help`.
pub const SETTINGS: &[crate::env::Setting] = &[
    crate::env::Setting { var: "RUST_LOG", default: "info", meaning: "tracing filter" },
    crate::env::Setting { var: "LOG_FORMAT", default: "text", meaning: "text, or json (one JSON object a line)" },
];

/// `RUST_LOG` as a filter (default `info`, sqlx notices at `warn`); an error naming it when
/// it is not a valid filter.
pub fn filter(env: &dyn Env) -> Result<EnvFilter, ConfigError> {
    match optional(env, "RUST_LOG") {
        // sqlx reports "relation already exists, skipping" as a notice at every start.
        None => Ok(EnvFilter::new("info,sqlx::postgres::notice=warn")),
        Some(spec) => {
            EnvFilter::try_new(&spec).map_err(|e| ConfigError::new("RUST_LOG", format!("not a valid filter: {e}")))
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` is checked first so that a typo is reported.
pub fn init(env: &dyn Env) -> Result<(), ConfigError> {
    let format = LogFormat::from_env(env)?;
    let filter = filter(env)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    // A second init (several services in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}
