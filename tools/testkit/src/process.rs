//! A service run as its real binary in a child process, for tests that kill it (SIGKILL) or
//! restart it.

use localpg::test_database::TestDatabase;
use secrecy::ExposeSecret;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use todo_shared::database::PoolMode;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub struct ServiceProcess {
    child: Child,
    pub addr: SocketAddr,
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port")
}

/// A channel to `addr` that connects on first use (a connect gives up after 500 ms): it
/// survives the process behind it being killed and started again.
pub fn lazy_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy()
}

/// Waits until the server at `addr` reports SERVING (failing the test after 30 s) and returns
/// how long that took.
pub async fn until_serving(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    loop {
        let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
        request.set_timeout(Duration::from_millis(500));
        if let Ok(r) = HealthClient::new(lazy_channel(addr)).check(request).await
            && r.into_inner().status() == ServingStatus::Serving
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the service at {addr} never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A process's resident memory now, in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("a VmRSS line in kB");
    kib * 1024
}

impl ServiceProcess {
    /// Starts `binary` on the test database `db` (as `crate::db_config` reaches it: directly, or
    /// through PgBouncer with its pool mode) with `env` on top of a clean environment for the
    /// service (no inherited database or RUST_LOG surprises); `addr_var` names the
    /// listen-address variable.
    pub fn start(binary: &str, addr_var: &str, addr: SocketAddr, db: &TestDatabase, env: &[(&str, &str)]) -> Self {
        Self::start_on(binary, addr_var, addr, &crate::db_config(db), env)
    }

    /// `start` on the database settings `config` (its URL, direct URL and pool mode; the rest
    /// are the binary's defaults unless `env` sets them): for a database that is not a
    /// `TestDatabase`, such as the failover drill's cluster behind HAProxy.
    pub fn start_on(
        binary: &str,
        addr_var: &str,
        addr: SocketAddr,
        config: &todo_shared::database::DbConfig,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(binary);
        command
            .env_remove("DATABASE_DIRECT_URL")
            .env_remove("DB_POOL_MODE")
            .env("RUST_LOG", "warn")
            // Load and fault tests hammer one user far past a real client's rate.
            .env("USER_CALLS_PER_SECOND", "1000000")
            .env("USER_CALLS_BURST", "1000000")
            .env("SIGNUP_MAX_PER_ADDRESS", "1000000")
            .env(addr_var, addr.to_string())
            .stdin(Stdio::null())
            // The services log to standard output: hidden, unless TEST_SERVICE_LOGS is set
            // (to see why a process answered what it did while debugging a test).
            .stdout(if std::env::var_os("TEST_SERVICE_LOGS").is_some() { Stdio::inherit() } else { Stdio::null() });
        command.env("DATABASE_URL", config.url.expose_secret());
        if let Some(direct) = &config.direct_url {
            command.env("DATABASE_DIRECT_URL", direct.expose_secret());
        }
        if config.pool_mode == PoolMode::Transaction {
            command.env("DB_POOL_MODE", "transaction");
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        ServiceProcess { child, addr }
    }

    /// SIGTERM, as an orchestrator stops a container; then waits up to `limit` for the exit.
    /// `None` if it did not exit in time.
    pub fn terminate(mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "sending SIGTERM with kill(1)");
        let started = std::time::Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("polling our child") {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no drain, no cleanup, as in a crash or an OOM kill.
    pub fn kill(mut self) {
        self.child.kill().expect("sending SIGKILL to our child");
        self.child.wait().expect("reaping our child");
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a run of a binary's command line printed, and its exit code.
pub struct CommandRun {
    /// The exit code (panics if the process was killed by a signal).
    pub code: i32,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl CommandRun {
    /// Everything, for an assertion message.
    pub fn text(&self) -> String {
        format!("exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `binary args` to its end with only `env` (and PATH) in its environment: the command
/// line tests of both binaries.
pub async fn run_command(binary: &str, args: &[&str], env: &[(&str, &str)]) -> CommandRun {
    let output = tokio::process::Command::new(binary)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {binary}: {e}"));
    CommandRun {
        code: output.status.code().expect("an exit code"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
