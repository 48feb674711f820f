//! What the integration tests of both services share: the real servers on port 0 over a fresh,
//! migrated database, their generated clients, and reading the error details of a status.

use localpg::test_database::TestDatabase;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::time::Duration;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{SignUpRequest, TokenPair, User};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_shared::access::TokenConfig;
use todo_shared::database::DbConfig;
use todo_shared::database::PoolMode;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_types::StatusExt;

pub use localpg;
pub use localpg::test_database;

pub mod logs;
pub mod otlp;
pub mod process;
pub mod scrape;
pub mod tls;

pub const ISSUER: &str = "todo-auth";
pub const AUDIENCE: &str = "todo";
/// bcrypt's minimum: tests exercise the logic, not the cost.
pub const TEST_BCRYPT_COST: u32 = 4;

/// A running server and the means to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningServer {
    /// Signals shutdown and waits until the server has drained and returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().expect("stop is called once").await.expect("the server task does not panic")
    }

    /// Waits until the server returns by itself (a failed start), without asking it to stop.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.handle.take().expect("wait is called once").await.expect("the server task does not panic")
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Settings for the test's database: through PgBouncer with `TEST_VIA_PGBOUNCER` (with a
/// direct URL for LISTEN and migrations, and the pool mode, as the README tells users), else
/// direct.
pub fn db_config(db: &TestDatabase) -> DbConfig {
    match localpg::test_database::via_pgbouncer() {
        Some(mode) => DbConfig {
            direct_url: Some(SecretString::from(db.url.clone())),
            pool_mode: if mode == "transaction" { PoolMode::Transaction } else { PoolMode::Session },
            ..db_config_for(&db.service_url)
        },
        None => db_config_for(&db.url),
    }
}

/// Settings for a database at `url` that is already migrated.
pub fn db_config_for(url: &str) -> DbConfig {
    DbConfig {
        url: SecretString::from(url.to_string()),
        direct_url: None,
        max_connections: 5,
        pool_mode: PoolMode::Session,
        run_migrations: false,
    }
}

pub fn token_config() -> TokenConfig {
    TokenConfig { issuer: ISSUER.into(), audience: AUDIENCE.into(), access_token_ttl: Duration::from_secs(900) }
}

pub fn auth_config(db: &TestDatabase) -> auth_service::AuthConfig {
    auth_config_with(db_config(db))
}

/// The test settings of auth-service over a database of the caller's choosing.
pub fn auth_config_with(db: DbConfig) -> auth_service::AuthConfig {
    auth_service::AuthConfig {
        addr: "127.0.0.1:0".parse().expect("a valid address"),
        db,
        token: token_config(),
        drain_timeout: Duration::from_secs(2),
        signing_key_file: None,
        refresh_token_ttl: Duration::from_secs(30 * 86_400),
        session_max_lifetime: Duration::from_secs(30 * 86_400),
        session_idle_timeout: Duration::from_secs(7 * 86_400),
        refresh_reuse_grace: Duration::from_secs(5),
        bcrypt_cost: TEST_BCRYPT_COST,
        throttle: auth_service::throttle::ThrottleConfig {
            max_failures_per_account: 5,
            max_failures_per_address: 100,
            // The tests sign many users up from 127.0.0.1.
            max_sign_ups_per_address: 10_000,
            window: Duration::from_secs(900),
        },
        cors_allowed_origins: Default::default(),
        endpoint: Default::default(),
    }
}

pub fn task_config(db: &TestDatabase) -> task_service::TaskConfig {
    task_config_with(db_config(db))
}

pub fn task_config_with(db: DbConfig) -> task_service::TaskConfig {
    task_service::TaskConfig {
        addr: "127.0.0.1:0".parse().expect("a valid address"),
        db,
        token: token_config(),
        drain_timeout: Duration::from_secs(2),
        revocation_window: Duration::from_secs(86_400),
        sync_retention: Duration::from_secs(45 * 86_400),
        max_tasks_per_user: 100_000,
        // Far above what a test sends: a test of the limit sets its own.
        call_rate: todo_shared::server::call_rate::CallRateConfig {
            per_second: std::num::NonZeroU32::new(1_000_000).expect("not zero"),
            burst: std::num::NonZeroU32::new(1_000_000).expect("not zero"),
        },
        watch: task_service::sync::watch::WatchSettings {
            buffer: 256,
            slow_reader: Duration::from_secs(10),
            max_streams_per_user: 16,
        },
        cors_allowed_origins: Default::default(),
        endpoint: Default::default(),
    }
}

/// Binds port 0 first, then spawns: the address is ready before the server task runs.
async fn spawn_server<F, Fut>(serve: F) -> RunningServer
where
    F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
    let addr = listener.local_addr().expect("a bound listener has an address");
    let (tx, rx) = oneshot::channel();
    let handle = tokio::spawn(serve(listener, rx));
    RunningServer { addr, shutdown: Some(tx), handle: Some(handle) }
}

pub async fn spawn_auth(config: auth_service::AuthConfig) -> RunningServer {
    spawn_server(|listener, rx| async move {
        auth_service::serve(listener, config, async move {
            let _ = rx.await;
        })
        .await
    })
    .await
}

pub async fn spawn_task(config: task_service::TaskConfig) -> RunningServer {
    spawn_server(|listener, rx| async move {
        task_service::serve(listener, config, async move {
            let _ = rx.await;
        })
        .await
    })
    .await
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connecting to a server that is listening")
}

/// Both services over one fresh database, with their clients.
pub struct TestApp {
    pub db: TestDatabase,
    pub auth_server: RunningServer,
    pub task_server: RunningServer,
    pub auth: AuthServiceClient<Channel>,
    pub tasks: TaskServiceClient<Channel>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        let db = TestDatabase::new().await;
        let auth_server = spawn_auth(auth_config(&db)).await;
        let task_server = spawn_task(task_config(&db)).await;
        let auth = AuthServiceClient::new(channel(auth_server.addr).await);
        let tasks = TaskServiceClient::new(channel(task_server.addr).await);
        TestApp { db, auth_server, task_server, auth, tasks }
    }

    /// Signs up `email` with a fixed good password.
    pub async fn sign_up(&self, email: &str) -> (User, TokenPair) {
        let response = self
            .auth
            .clone()
            .sign_up(SignUpRequest { email: email.into(), password: PASSWORD.into() })
            .await
            .expect("sign-up of a new address succeeds")
            .into_inner();
        (response.user.expect("SignUp returns the user"), response.tokens.expect("SignUp returns tokens"))
    }
}

/// The password `TestApp::sign_up` uses.
pub const PASSWORD: &str = "correct horse battery";

/// Signs up `email` (with `PASSWORD`) at the auth-service listening on `auth_addr` and returns
/// the new session's access token.
pub async fn access_token(auth_addr: SocketAddr, email: &str) -> String {
    AuthServiceClient::new(channel(auth_addr).await)
        .sign_up(SignUpRequest { email: email.into(), password: PASSWORD.into() })
        .await
        .expect("sign-up of a new address succeeds")
        .into_inner()
        .tokens
        .expect("SignUp returns tokens")
        .access_token
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authed<T>(message: T, access_token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {access_token}").parse().expect("a token is valid ASCII metadata"));
    request
}

/// The ErrorInfo reason of a status ("" if it has none).
pub fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().map(|info| info.reason).unwrap_or_default()
}

/// The ErrorInfo domain of a status ("" if it has none).
pub fn domain(status: &tonic::Status) -> String {
    status.get_details_error_info().map(|info| info.domain).unwrap_or_default()
}

/// The fields named by the status's BadRequest.
pub fn bad_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|br| br.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Asserts code and reason, printing the whole status when they differ.
#[track_caller]
pub fn assert_error(status: &tonic::Status, code: tonic::Code, expected_reason: &str) {
    assert_eq!((status.code(), reason(status).as_str()), (code, expected_reason), "unexpected status: {status:?}");
}

/// How often `refused_within` repeats its call.
const REFUSAL_POLL: Duration = Duration::from_millis(20);

/// Repeats `call` every 20 ms until it fails, and asserts that it fails with `code` and the
/// ErrorInfo `reason`, and within `within` of the moment this was called; returns how long it
/// took. For the guarantees of the form "refused within 1 s" (a revoked session, a retired key).
/// Panics naming the status when the failure is another one, and when `within` passes first.
pub async fn refused_within<T, F, Fut>(within: Duration, code: tonic::Code, reason: &str, mut call: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let started = std::time::Instant::now();
    loop {
        match call().await {
            Err(status) => {
                let took = started.elapsed();
                assert_error(&status, code, reason);
                assert!(took <= within, "refused with {reason}, but only after {took:?} (more than {within:?})");
                return took;
            }
            Ok(_) if started.elapsed() > within => panic!("still accepted after {within:?}; expected {reason}"),
            Ok(_) => tokio::time::sleep(REFUSAL_POLL).await,
        }
    }
}

/// Statements of the services (application_name `todo`) in the pool's database now waiting for
/// a lock.
pub async fn statements_waiting_on_locks(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'todo' AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity can be read")
}

/// Waits (up to 10 s, else panics) until at least `n` statements of the services wait for a lock:
/// a test that needs a call to be blocked waits for the block, never for a sleep.
pub async fn until_waiting_on_locks(pool: &sqlx::PgPool, n: i64) {
    let started = std::time::Instant::now();
    while statements_waiting_on_locks(pool).await < n {
        assert!(started.elapsed() < Duration::from_secs(10), "{n} statement(s) never waited for a lock within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
