//! task-service settings, read once from the environment.

use crate::sync::watch::WatchSettings;
use std::net::SocketAddr;
use std::time::Duration;
use todo_shared::access::TokenConfig;
use todo_shared::access::token::EXP_LEEWAY_SECONDS;
use todo_shared::database::DbConfig;
use todo_shared::env::{ConfigError, Env, Setting, seconds, socket_addr, whole};
use todo_shared::server::call_rate::CallRateConfig;
use todo_shared::server::endpoint::{EndpointConfig, drain_timeout};
use todo_shared::server::grpc_web::CorsOrigins;

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
    /// How long tombstones of deleted tasks are kept: a sync token older than that must sync
    /// again from the start.
    pub sync_retention: Duration,
    /// WatchTasks: the events buffered per stream, and how long a full buffer is tolerated.
    pub watch: WatchSettings,
    /// Tasks one user may have (MAX_TASKS_PER_USER, default 100,000, as Google Tasks caps a
    /// user's tasks); CreateTask past it gets RESOURCE_EXHAUSTED QUOTA_EXCEEDED.
    pub max_tasks_per_user: i64,
    /// Calls per user per instance (USER_CALLS_PER_SECOND, USER_CALLS_BURST).
    pub call_rate: CallRateConfig,
    /// Browser origins allowed to call over gRPC-Web (CORS_ALLOWED_ORIGINS).
    pub cors_allowed_origins: CorsOrigins,
    /// TLS and the metrics listener.
    pub endpoint: EndpointConfig,
}

/// The variables `TaskConfig::from_env` reads itself (the rest come from the shared parsers;
/// see [`settings`]).
pub const SETTINGS: &[Setting] = &[
    Setting { var: "TASK_ADDR", default: DEFAULT_ADDR, meaning: "listen address" },
    Setting {
        var: "REVOCATION_WINDOW_SECONDS",
        default: "86400",
        meaning: "how long revoked or deleted sessions are remembered; at least ACCESS_TOKEN_TTL_SECONDS + 5",
    },
    Setting {
        var: "SYNC_RETENTION_DAYS",
        default: "45",
        meaning: "how long tombstones of deleted tasks are kept; an older sync token syncs again from the start",
    },
    Setting {
        var: "WATCH_BUFFER_EVENTS",
        default: "256",
        meaning: "events held per WatchTasks stream for a slow reader",
    },
    Setting {
        var: "WATCH_SLOW_READER_SECONDS",
        default: "10",
        meaning: "how long a reader may take none of its waiting events before its stream is cut",
    },
    Setting {
        var: "MAX_STREAMS_PER_USER",
        default: "16",
        meaning: "WatchTasks streams one user may have open on one instance",
    },
    Setting { var: "MAX_TASKS_PER_USER", default: "100000", meaning: "tasks one user may have" },
];

/// Every setting the task-service binary reads, as `--help` lists them: its own, then the
/// shared parsers' (database, tokens, call rate, endpoint, CORS), then logging and `healthcheck`'s.
pub fn settings() -> Vec<&'static [Setting]> {
    let [logging, healthcheck] = todo_shared::server::service_main::PROCESS_SETTINGS;
    vec![
        SETTINGS,
        DbConfig::SETTINGS,
        TokenConfig::SETTINGS,
        CallRateConfig::SETTINGS,
        todo_shared::server::endpoint::SETTINGS,
        CorsOrigins::SETTINGS,
        logging,
        healthcheck,
    ]
}

impl TaskConfig {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let token = TokenConfig::from_env(env)?;
        Ok(Self {
            addr: socket_addr(env, "TASK_ADDR", DEFAULT_ADDR)?,
            db: DbConfig::from_env(env)?,
            token: token.clone(),
            drain_timeout: drain_timeout(env)?,
            revocation_window: revocation_window(env, &token)?,
            sync_retention: Duration::from_secs(86_400 * whole(env, "SYNC_RETENTION_DAYS", 45, 1..=3650, "days")?),
            watch: WatchSettings {
                buffer: whole(env, "WATCH_BUFFER_EVENTS", 256, 1..=65_536, "events")? as usize,
                slow_reader: seconds(env, "WATCH_SLOW_READER_SECONDS", 10, 1..=600)?,
                max_streams_per_user: whole(env, "MAX_STREAMS_PER_USER", 16, 1..=10_000, "streams")? as usize,
            },
            call_rate: CallRateConfig::from_env(env)?,
            max_tasks_per_user: whole(env, "MAX_TASKS_PER_USER", 100_000, 1..=10_000_000, "tasks")? as i64,
            cors_allowed_origins: CorsOrigins::from_env(env)?,
            endpoint: EndpointConfig::from_env(env)?,
        })
    }
}

/// `REVOCATION_WINDOW_SECONDS` (default a day): a revoked session is forgotten after this long,
/// so it must outlast every access token of the session, which lives up to
/// `ACCESS_TOKEN_TTL_SECONDS` plus the verifier's leeway after the revocation; a shorter window
/// is refused, naming both settings.
fn revocation_window(env: &dyn Env, token: &TokenConfig) -> Result<Duration, ConfigError> {
    let window = seconds(env, "REVOCATION_WINDOW_SECONDS", 86_400, 60..=30 * 86_400)?;
    let needed = token.access_token_ttl + Duration::from_secs(EXP_LEEWAY_SECONDS);
    if window < needed {
        return Err(ConfigError::new(
            "REVOCATION_WINDOW_SECONDS",
            format!(
                "must be at least ACCESS_TOKEN_TTL_SECONDS + {EXP_LEEWAY_SECONDS} s ({} s): a revoked session's access \
                 tokens would verify again once it is forgotten, got {}",
                needed.as_secs(),
                window.as_secs()
            ),
        ));
    }
    Ok(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` lists exactly what is read: a new variable without its line (or a line left
    /// behind) fails here.
    #[test]
    fn the_settings_list_names_every_variable_read() {
        let env = todo_shared::env::Recording::new(&[("DATABASE_URL", "postgres://h/db")]);
        TaskConfig::from_env(&env).unwrap();
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
    fn defaults_and_errors() {
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db")];
        let defaults = TaskConfig::from_env(&env).unwrap();
        assert_eq!(defaults.addr.to_string(), "127.0.0.1:50052");
        assert_eq!(defaults.revocation_window, Duration::from_secs(86_400));
        assert_eq!(defaults.sync_retention, Duration::from_secs(45 * 86_400));
        assert_eq!((defaults.watch.buffer, defaults.watch.slow_reader), (256, Duration::from_secs(10)));
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db"), ("TASK_ADDR", "nowhere")];
        assert_eq!(TaskConfig::from_env(&env).unwrap_err().var, "TASK_ADDR");
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db"), ("WATCH_BUFFER_EVENTS", "0")];
        let error = TaskConfig::from_env(&env).unwrap_err();
        assert_eq!(
            (error.var, error.problem.as_str()),
            ("WATCH_BUFFER_EVENTS", "must be from 1 to 65536 events, got 0")
        );
        let env: &[(&str, &str)] = &[
            ("DATABASE_URL", "postgres://h/db"),
            ("ACCESS_TOKEN_TTL_SECONDS", "3600"),
            ("REVOCATION_WINDOW_SECONDS", "3604"),
        ];
        assert_eq!(
            TaskConfig::from_env(&env).unwrap_err().to_string(),
            "REVOCATION_WINDOW_SECONDS: must be at least ACCESS_TOKEN_TTL_SECONDS + 5 s (3605 s): a revoked \
             session's access tokens would verify again once it is forgotten, got 3604"
        );
        let env: &[(&str, &str)] = &[
            ("DATABASE_URL", "postgres://h/db"),
            ("ACCESS_TOKEN_TTL_SECONDS", "3600"),
            ("REVOCATION_WINDOW_SECONDS", "3605"),
        ];
        assert_eq!(TaskConfig::from_env(&env).unwrap().revocation_window, Duration::from_secs(3605));
        let env: &[(&str, &str)] = &[("DATABASE_URL", "postgres://h/db"), ("TLS_KEY_FILE", "/etc/hostname")];
        assert_eq!(
            TaskConfig::from_env(&env).unwrap_err().to_string(),
            "TLS_CERT_FILE: is not set but TLS_KEY_FILE is: set both for TLS, or neither"
        );
    }
}
