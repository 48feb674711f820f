//! The system under test: a private PostgreSQL and both services as separate release-mode
//! processes (so each one's memory can be read), on free loopback ports.

use anyhow::{Context, bail};
use localpg::{Durability, PrivatePostgres, find_binaries};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A server process of the bench (a service or the floor); SIGTERM when dropped.
pub struct Service {
    /// Its name in the output (`task-service`, `auth-service`, `floor`).
    pub name: &'static str,
    /// Where it serves gRPC.
    pub addr: SocketAddr,
    child: Child,
}

impl Service {
    /// Its process id, for /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (current, peak) resident memory in MB, from /proc.
    pub fn rss_mb(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
                .unwrap_or(f64::NAN)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // SIGTERM, so the service drains and exits as in production.
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// Builds both service binaries in release mode next to this one.
pub fn build_services() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--locked", "-p", "auth-service", "-p", "task-service"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the services failed");
    }
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("the bench binary lives in a folder")?.to_path_buf())
}

/// Starts the bench's PostgreSQL with extra server `settings` (pg_stat_statements: `pgstat`).
pub fn start_postgres(settings: &[(String, String)]) -> anyhow::Result<PrivatePostgres> {
    let binaries = find_binaries().map_err(anyhow::Error::msg)?;
    let root = std::env::temp_dir().join(format!("todo-bench-pg-{}", uuid::Uuid::new_v4().simple()));
    // Durable settings, as in production: the comparison with pgbench is on the same server.
    PrivatePostgres::start_with_settings(binaries, &root, Durability::Safe, true, settings).map_err(anyhow::Error::msg)
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts `name` and returns it with the time it took to report SERVING.
pub async fn spawn_service(
    dir: &std::path::Path,
    name: &'static str,
    addr_var: &str,
    env: &[(&str, String)],
) -> anyhow::Result<(Service, Duration)> {
    let addr = free_addr()?;
    let mut command = Command::new(dir.join(name));
    command
        .env(addr_var, addr.to_string())
        .env("RUST_LOG", "warn")
        // The load comes from few users (deep-page: one) at thousands of calls a second.
        .env("USER_CALLS_PER_SECOND", "10000000")
        .env("USER_CALLS_BURST", "10000000")
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    spawn_serving(name, addr, command).await
}

/// Starts the floor (`crate::floor`): this binary's hidden `floor-server` subcommand, serving
/// the replies written in `replies`; returns it with the time it took to report SERVING.
pub async fn spawn_floor(replies: &std::path::Path) -> anyhow::Result<(Service, Duration)> {
    let addr = free_addr()?;
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("floor-server").arg("--addr").arg(addr.to_string()).arg("--replies").arg(replies);
    spawn_serving("floor", addr, command).await
}

/// Runs `command` (a gRPC server that will listen on `addr`) and waits until its health
/// service says SERVING.
async fn spawn_serving(
    name: &'static str,
    addr: SocketAddr,
    mut command: Command,
) -> anyhow::Result<(Service, Duration)> {
    let started = Instant::now();
    let child = command.stdout(Stdio::null()).spawn().with_context(|| format!("starting {name}"))?;
    let service = Service { name, addr, child };
    // Bounded: 10 s at most.
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect().await
            && let Ok(r) = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await
            && r.into_inner().status() == ServingStatus::Serving
        {
            return Ok((service, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("{name} did not become SERVING within 10 s")
}
