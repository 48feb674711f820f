//! An idle stack lets a serverless database sleep (Neon suspends a compute after 5 minutes
//! without a query, closing every connection): one auth-service and two task-service instances,
//! after calls, a stream and a logout, send no statement at all from the first minute of
//! silence on, while health checks keep coming (as a kubelet's probes do). Then the compute
//! "suspends": every backend of the services is terminated. Nothing reconnects while nobody
//! calls; the next calls succeed, and a session revoked afterwards is refused by both
//! task-services within 1 s, first from the database, then from the listener that the calls woke.
//!
//! Counted with `pg_stat_database` (commits and rollbacks of the services' database), read over
//! a connection to another database so that the reading is not counted. The test's PostgreSQL
//! runs with autovacuum off: its workers visit every database each minute, in transactions of
//! their own that `pg_stat_database` counts too, and they are the database's doing, not ours.
//! Both variants (straight to PostgreSQL, and through PgBouncer in transaction mode with the
//! listener on the direct URL) run at once in the direct pass of CI; five minutes of silence
//! twice more in the PgBouncer pass would prove nothing new.

use faults::{DedicatedPostgres, lazy_channel, wait_for_health};
use localpg::pgbouncer::PgBouncer;
use secrecy::SecretString;
use sqlx::Connection;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{LoginRequest, LogoutRequest, SignUpRequest};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, ListTasksRequest, WatchTasksRequest};
use todo_shared::database::{DbConfig, PoolMode};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// The silence watched: the serverless goal's five minutes.
const WINDOW: Duration = Duration::from_secs(300);
/// Statements may still run in the first minute (the instances notice they are idle).
const SETTLING: Duration = Duration::from_secs(60);
/// How often the watcher reads the counters and calls health, as a kubelet probes.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const DATABASE: &str = "idle";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_straight_to_postgresql() {
    idle_stack(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_through_pgbouncer_in_transaction_mode() {
    if localpg::system_tool::PGBOUNCER.require().is_none() {
        return;
    }
    idle_stack(true).await;
}

async fn idle_stack(via_pgbouncer: bool) {
    let label = if via_pgbouncer { "through PgBouncer" } else { "straight" };
    if let Some(mode) = testkit::test_database::via_pgbouncer() {
        eprintln!("idle ({label}): not run in the PgBouncer pass ({mode} mode): both variants ran in the direct pass");
        return;
    }
    let pg = DedicatedPostgres::start();
    let mut admin = sqlx::PgConnection::connect(&pg.url()).await.expect("connecting to the postgres database");
    for statement in ["ALTER SYSTEM SET autovacuum = off", "SELECT pg_reload_conf()", "CREATE DATABASE idle"] {
        sqlx::query(statement).execute(&mut admin).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let direct = pg.server.url(DATABASE);
    let mut bouncer = None;
    let db = if via_pgbouncer {
        let dir = std::env::temp_dir().join(format!("todo-idle-pgb-{}", uuid::Uuid::new_v4().simple()));
        let started = PgBouncer::start(&pg.server, &dir, "transaction").unwrap_or_else(|e| panic!("{e}"));
        let db = DbConfig {
            url: SecretString::from(started.url(DATABASE)),
            direct_url: Some(SecretString::from(direct.clone())),
            pool_mode: PoolMode::Transaction,
            ..testkit::db_config_for(&direct)
        };
        bouncer = Some(started);
        db
    } else {
        testkit::db_config_for(&direct)
    };
    let db = DbConfig { run_migrations: true, ..db };
    let auth_server = testkit::spawn_auth(testkit::auth_config_with(db.clone())).await;
    let task_servers = [
        testkit::spawn_task(testkit::task_config_with(db.clone())).await,
        testkit::spawn_task(testkit::task_config_with(db)).await,
    ];
    let addrs: Vec<SocketAddr> = std::iter::once(auth_server.addr).chain(task_servers.iter().map(|s| s.addr)).collect();
    for addr in &addrs {
        wait_for_health(*addr, ServingStatus::Serving, Duration::from_secs(30)).await.expect("serving");
    }
    let mut auth = AuthServiceClient::new(lazy_channel(auth_server.addr));
    let tasks = task_servers.iter().map(|s| TaskServiceClient::new(lazy_channel(s.addr))).collect::<Vec<_>>();

    // Work of every kind first: sign-ups, writes on both instances, a stream that sees a change
    // and closes, a logout.
    let sign_up = |email: &str| SignUpRequest { email: email.into(), password: testkit::PASSWORD.into() };
    let alice = auth.sign_up(sign_up("alice@example.com")).await.unwrap().into_inner().tokens.unwrap();
    let bob = auth.sign_up(sign_up("bob@example.com")).await.unwrap().into_inner().tokens.unwrap();
    let mut stream = tasks[1]
        .clone()
        .watch_tasks(testkit::authed(WatchTasksRequest::default(), &alice.access_token))
        .await
        .unwrap()
        .into_inner();
    for (i, client) in tasks.iter().enumerate() {
        let create = CreateTaskRequest { title: format!("before the silence {i}"), ..Default::default() };
        client.clone().create_task(testkit::authed(create, &alice.access_token)).await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("a change in time");
    assert!(seen.unwrap().is_some(), "the stream delivers the first creation");
    drop(stream);
    auth.logout(LogoutRequest { refresh_token: bob.refresh_token.clone() }).await.unwrap();
    let last_call = Instant::now();

    // The silence: only health checks, every 10 s, on each instance.
    let mut observer = sqlx::PgConnection::connect(&pg.url()).await.expect("connecting to the postgres database");
    let mut settled: Option<i64> = None;
    let mut samples = Vec::new();
    while last_call.elapsed() < WINDOW {
        tokio::time::sleep(SAMPLE_EVERY).await;
        for addr in &addrs {
            assert_eq!(faults::health(*addr).await, Some(ServingStatus::Serving), "{addr} healthy while idle");
        }
        let count = transactions(&mut observer).await;
        samples.push(format!("{:.0}s {count}", last_call.elapsed().as_secs_f64()));
        if last_call.elapsed() >= SETTLING && settled.is_none() {
            settled = Some(count);
        }
    }
    let settled = settled.expect("the window is longer than the settling time");
    let at_end = transactions(&mut observer).await;
    println!("idle ({label}): transactions in the services' database by seconds since the last call: {samples:?}");
    assert_eq!(
        at_end - settled,
        0,
        "({label}) transactions between {SETTLING:?} and {WINDOW:?} of silence (samples: {samples:?})"
    );

    // The compute suspends: every connection to the services' database is closed.
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(DATABASE)
    .fetch_one(&mut observer)
    .await
    .unwrap();
    println!("idle ({label}): {terminated} connection(s) closed, as a suspending compute closes them");
    // Nothing comes back while nobody calls: a reconnect would wake the compute for nobody. (The
    // counters are read again after a moment: a terminated backend flushes its statistics as it
    // exits, which may count a transaction it ran long ago.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_suspend = transactions(&mut observer).await;
    for second in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(backends(&mut observer).await, 0, "({label}) a connection opened {second} s after the suspension");
    }
    for addr in &addrs {
        assert_eq!(faults::health(*addr).await, Some(ServingStatus::Serving), "{addr} healthy while idle");
    }
    assert_eq!(transactions(&mut observer).await, after_suspend, "({label}) statements with no call to make");

    // The next calls succeed, on every instance.
    for client in &tasks {
        let list =
            faults::with_deadline(ListTasksRequest::default(), Some(&alice.access_token), Duration::from_secs(5));
        let listed = client.clone().list_tasks(list).await.unwrap_or_else(|e| panic!("({label}) first call: {e:?}"));
        assert_eq!(listed.into_inner().tasks.len(), 2, "({label}) the tasks written before the silence");
    }
    // A session revoked now is refused by both within 1 s (checked in the database: the list is
    // not live yet); and again once the listeners the calls woke have loaded the list.
    for round in ["right after waking", "with the listeners back"] {
        let login = LoginRequest { email: "alice@example.com".into(), password: testkit::PASSWORD.into() };
        let session = auth.login(login).await.unwrap().into_inner().tokens.unwrap();
        for client in &tasks {
            let list = ListTasksRequest::default();
            client.clone().list_tasks(testkit::authed(list, &session.access_token)).await.unwrap();
        }
        auth.logout(LogoutRequest { refresh_token: session.refresh_token.clone() }).await.unwrap();
        let revoked = Instant::now();
        for client in &tasks {
            let call = || {
                let request = faults::with_deadline(
                    ListTasksRequest::default(),
                    Some(&session.access_token),
                    Duration::from_secs(2),
                );
                let mut client = client.clone();
                async move { client.list_tasks(request).await }
            };
            let left = Duration::from_secs(1).saturating_sub(revoked.elapsed());
            testkit::refused_within(left, Code::Unauthenticated, "SESSION_REVOKED", call).await;
        }
        println!(
            "idle ({label}): revoked {round}: refused by both task-services {:?} after the logout",
            revoked.elapsed()
        );
        if round == "right after waking" {
            // Each task-service's listener is back on its connection (LISTEN) within moments.
            let started = Instant::now();
            while listeners(&mut observer).await < 2 {
                assert!(started.elapsed() < Duration::from_secs(10), "({label}) listeners back after the calls");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(bouncer);
}

/// Transactions committed or rolled back in the services' database so far.
async fn transactions(observer: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1")
        .bind(DATABASE)
        .fetch_one(observer)
        .await
        .unwrap()
}

/// Connections open to the services' database.
async fn backends(observer: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
        .bind(DATABASE)
        .fetch_one(observer)
        .await
        .unwrap()
}

/// Connections to the services' database whose last statement was a LISTEN.
async fn listeners(observer: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query ILIKE 'LISTEN%'")
        .bind(DATABASE)
        .fetch_one(observer)
        .await
        .unwrap()
}
