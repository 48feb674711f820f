//! What both binaries do in `main`: logging, configuration with one-line errors, binding the
//! listen address, serving until SIGINT/SIGTERM; or, as `<binary> healthcheck`, asking a
//! running instance whether it is SERVING (for container health checks with no extra tools).

use crate::config::{ConfigError, Env, ProcessEnv, socket_addr};
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
    pub addr_var: &'static str,
    pub default_addr: &'static str,
    pub load: fn(&dyn Env) -> Result<C, ConfigError>,
    pub addr: fn(&C) -> SocketAddr,
}

pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

impl<C> Binary<C> {
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
                .and_then(|addr| Ok((addr, crate::tls::CheckTls::from_env(&ProcessEnv)?)));
            return match settings {
                Ok((addr, tls)) => crate::health::check_command(addr, self.service, tls).await,
                Err(e) => fail("configuration error: ", &e, 2),
            };
        }
        if let Err(e) = crate::telemetry::init(&ProcessEnv) {
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
        match serve(listener, config, Box::pin(crate::grpc_server::shutdown_signal())).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail("", &format!("{e:#}"), 1),
        }
    }
}
