//! What the fault tests share: a PostgreSQL of the test's own (so that stopping it disturbs no
//! other test), both services on it with the migrations applied at their start, and health.

use localpg::{Durability, PrivatePostgres, find_binaries};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::RunningServer;
use todo_shared::database::DbConfig;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A PostgreSQL for one test, with fsync on: an outage must not lose what was committed.
pub struct DedicatedPostgres {
    pub server: PrivatePostgres,
}

impl DedicatedPostgres {
    pub fn start() -> Self {
        let binaries = find_binaries().unwrap_or_else(|e| panic!("{e}"));
        let root = std::env::temp_dir().join(format!("todo-fault-pg-{}", uuid::Uuid::new_v4().simple()));
        let server = PrivatePostgres::start(binaries, &root, Durability::Safe, true)
            .unwrap_or_else(|e| panic!("starting a dedicated PostgreSQL: {e}"));
        DedicatedPostgres { server }
    }

    pub fn url(&self) -> String {
        self.server.url("postgres")
    }

    /// Stops the server ("fast" or "immediate"); blocks the calling thread until it is down.
    pub fn stop(&mut self, mode: &str) {
        tokio::task::block_in_place(|| self.server.pause(mode)).unwrap_or_else(|e| panic!("stopping PostgreSQL: {e}"));
    }

    /// Starts it again on the same port; blocks until it accepts connections.
    pub fn start_again(&mut self) {
        tokio::task::block_in_place(|| self.server.resume()).unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
    }

    /// Service settings for this server: the services apply the migrations themselves.
    pub fn db_config(&self) -> DbConfig {
        DbConfig { run_migrations: true, max_connections: 10, ..testkit::db_config_for(&self.url()) }
    }

    /// A pool of the test's own, to look at the data.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&self.url()).await.expect("connecting")
    }
}

/// Both services on one database.
pub struct Services {
    pub auth: RunningServer,
    pub task: RunningServer,
}

impl Services {
    pub async fn spawn(db: DbConfig) -> Self {
        let auth = testkit::spawn_auth(testkit::auth_config_with(db.clone())).await;
        let task = testkit::spawn_task(testkit::task_config_with(db)).await;
        Services { auth, task }
    }
}

/// A channel that connects lazily, so it can be made before the server answers.
pub fn lazy_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// The overall health status of the server at `addr` (`None` if it does not answer in 1 s).
pub async fn health(addr: SocketAddr) -> Option<ServingStatus> {
    let mut client = HealthClient::new(lazy_channel(addr));
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.set_timeout(Duration::from_secs(1));
    client.check(request).await.ok().map(|r| r.into_inner().status())
}

/// Polls health every 20 ms until it is `wanted`; the time it took, or `None` after `limit`.
pub async fn wait_for_health(addr: SocketAddr, wanted: ServingStatus, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if health(addr).await == Some(wanted) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A request with a deadline (grpc-timeout) of `timeout`.
pub fn with_deadline<T>(message: T, token: Option<&str>, timeout: Duration) -> tonic::Request<T> {
    let mut request = match token {
        Some(token) => testkit::authed(message, token),
        None => tonic::Request::new(message),
    };
    request.set_timeout(timeout);
    request
}
