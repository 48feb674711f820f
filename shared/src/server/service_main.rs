//! What both binaries do to serve: logging, configuration with one-line errors, binding the
//! listen address, serving until SIGINT/SIGTERM; or, for `<binary> healthcheck`, asking a
//! running instance whether it is SERVING (for container health checks with no extra tools).
//! The command line that chooses between them is `cli`'s.

use crate::env::{ConfigError, Env, ProcessEnv, Setting, socket_addr};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use tokio::net::TcpListener;

/// How a binary finds and runs its service.
pub struct Binary<C> {
    /// "auth-service" or "task-service", for messages.
    pub name: &'static str,
    /// The fully qualified gRPC service name, for the health check.
    pub service: &'static str,
    /// The listen-address variable, e.g. `AUTH_ADDR`.
    pub addr_var: &'static str,
    /// Its default, e.g. `127.0.0.1:50051`.
    pub default_addr: &'static str,
    /// Reads the service's settings.
    pub load: fn(&dyn Env) -> Result<C, ConfigError>,
    /// The listen address in those settings.
    pub addr: fn(&C) -> SocketAddr,
}

/// Resolves when the process should stop (SIGINT or SIGTERM).
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The settings every binary reads beside its service's configuration: logging, and what
/// `healthcheck` needs to reach a TLS server.
pub const PROCESS_SETTINGS: [&[Setting]; 2] =
    [crate::server::telemetry::SETTINGS, crate::server::tls::CheckTls::SETTINGS];

/// Reads the settings of [`PROCESS_SETTINGS`] from `env` without installing anything: for tests
/// that the lists name exactly what is read.
pub fn read_process_settings(env: &dyn Env) -> Result<(), ConfigError> {
    crate::server::telemetry::LogFormat::from_env(env)?;
    crate::server::telemetry::filter(env)?;
    crate::server::telemetry::TraceSettings::from_env(env);
    crate::server::tls::CheckTls::from_env(env)?;
    Ok(())
}

impl<C> Binary<C> {
    /// `<binary> healthcheck`: asks the instance at the listen address whether it is SERVING
    /// (exit code 0 if so, 1 if not; 2 with one line naming a bad setting).
    pub async fn healthcheck(&self) -> ExitCode {
        let settings = socket_addr(&ProcessEnv, self.addr_var, self.default_addr)
            .and_then(|addr| Ok((addr, crate::server::tls::CheckTls::from_env(&ProcessEnv)?)));
        match settings {
            Ok((addr, tls)) => crate::server::health::check_command(addr, self.service, tls).await,
            Err(e) => {
                eprintln!("{}: configuration error: {e}", self.name);
                ExitCode::from(2)
            }
        }
    }

    /// The binary's `main` with no subcommand: settings are read (a bad one: one line naming it,
    /// exit code 2), telemetry is set up, the address is bound and `serve` runs until SIGINT or
    /// SIGTERM (exit code 0, or 1 when it fails).
    pub async fn main<F, Fut>(self, serve: F) -> ExitCode
    where
        F: FnOnce(TcpListener, C, Shutdown) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let name = self.name;
        let fail = |what: &str, e: &dyn std::fmt::Display, code: u8| {
            eprintln!("{name}: {what}{e}");
            ExitCode::from(code)
        };
        if let Err(e) = crate::server::telemetry::init(&ProcessEnv, name) {
            return fail("configuration error: ", &e, 2);
        }
        let config = match (self.load)(&ProcessEnv) {
            Ok(config) => config,
            Err(e) => return fail("configuration error: ", &e, 2),
        };
        let addr = (self.addr)(&config);
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(e) => {
                return fail(&format!("cannot listen on {addr} ({}): ", self.addr_var), &e, 1);
            }
        };
        let served = serve(listener, config, Box::pin(crate::server::serve::shutdown_signal())).await;
        // Off the runtime's threads: the exporter's last batch blocks until sent (or timed out).
        let _ = tokio::task::spawn_blocking(crate::server::telemetry::shutdown).await;
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("", &format!("{e:#}"), 1),
        }
    }
}
