//! What both binaries do in `main`: logging, configuration with one-line errors, binding the
//! listen address, serving until SIGINT/SIGTERM; or, as `<binary> healthcheck`, asking a
//! running instance whether it is SERVING (for container health checks with no extra tools).

use crate::env::{ConfigError, Env, ProcessEnv, socket_addr};
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

impl<C> Binary<C> {
    /// The binary's `main`: `healthcheck` asks a running instance and exits 0 if it is SERVING;
    /// otherwise settings are read (a bad one: one line naming it, exit code 2), telemetry is set
    /// up, the address is bound and `serve` runs until SIGINT or SIGTERM (exit code 0, or 1 when
    /// it fails).
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
        if std::env::args().nth(1).as_deref() == Some("healthcheck") {
            let settings = socket_addr(&ProcessEnv, self.addr_var, self.default_addr)
                .and_then(|addr| Ok((addr, crate::server::tls::CheckTls::from_env(&ProcessEnv)?)));
            return match settings {
                Ok((addr, tls)) => crate::server::health::check_command(addr, self.service, tls).await,
                Err(e) => fail("configuration error: ", &e, 2),
            };
        }
        if let Err(e) = crate::server::telemetry::init(&ProcessEnv) {
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
        match serve(listener, config, Box::pin(crate::server::serve::shutdown_signal())).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("", &format!("{e:#}"), 1),
        }
    }
}
