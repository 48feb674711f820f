//! PgBouncer (Debian's 1.18) in front of the services.
//!
//! Each test needs pgbouncer (`apt-get install pgbouncer`) and is skipped without it, unless `CI`
//! is set (`localpg::system_tool`).
//!
//! What these tests establish:
//! - With `DATABASE_DIRECT_URL` for migrations and LISTEN, the services work through the pooler
//!   in session mode, and in transaction mode with `DB_POOL_MODE=transaction`
//!   (`TEST_VIA_PGBOUNCER=session|transaction` runs whole suites either way; CI runs the whole
//!   workspace in transaction mode).
//! - In transaction mode plain sqlx 0.9 is not safe, even with its statement cache off: its named
//!   statements stay on server connections that other clients get next, and its unnamed ones are
//!   parsed and executed in two round trips between which the pooler may switch connections.
//!   `database::Db` in transaction mode runs every statement unnamed inside a transaction: the same load
//!   has no failure, and no statement is left behind.
//! - A statement queued in the pooler, out of statement_timeout's reach, is given up before the
//!   call's deadline: the client hears UNAVAILABLE, not its own time-out.

use faults::{DedicatedPostgres, lazy_channel, wait_for_health, with_deadline};
use localpg::pgbouncer::PgBouncer;
use localpg::system_tool::PGBOUNCER;
use secrecy::SecretString;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::{Duration, Instant};
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{LogoutRequest, SignUpRequest};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, ListTasksRequest};
use todo_shared::database::{Db, PoolMode};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn bouncer(pg: &DedicatedPostgres, mode: &str) -> PgBouncer {
    let dir = std::env::temp_dir().join(format!("todo-fault-pgb-{}", uuid::Uuid::new_v4().simple()));
    PgBouncer::start(&pg.server, &dir, mode).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_behind_pgbouncer_in_session_mode() {
    let Some(_) = PGBOUNCER.require() else { return };
    services_work_behind_pgbouncer("session", PoolMode::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_behind_pgbouncer_in_transaction_mode() {
    let Some(_) = PGBOUNCER.require() else { return };
    services_work_behind_pgbouncer("transaction", PoolMode::Transaction).await;
}

/// Both services through the pooler, migrating and listening on the direct URL: sign-up,
/// create, list, and a logout that reaches task-service within a second.
async fn services_work_behind_pgbouncer(pgbouncer_mode: &str, pool_mode: PoolMode) {
    let pg = DedicatedPostgres::start();
    let bouncer = bouncer(&pg, pgbouncer_mode);
    let db = todo_shared::database::DbConfig {
        url: SecretString::from(bouncer.url("postgres")),
        direct_url: Some(SecretString::from(pg.url())),
        pool_mode,
        ..pg.db_config()
    };
    let services = faults::Services::spawn(db).await;
    for addr in [services.auth.addr, services.task.addr] {
        wait_for_health(addr, ServingStatus::Serving, Duration::from_secs(20)).await.expect("serving");
    }
    let mut auth = AuthServiceClient::new(lazy_channel(services.auth.addr));
    let mut tasks = TaskServiceClient::new(lazy_channel(services.task.addr));
    let request = SignUpRequest { email: "pooled@example.com".into(), password: testkit::PASSWORD.into() };
    let tokens = auth.sign_up(request).await.unwrap().into_inner().tokens.unwrap();
    let create = CreateTaskRequest { title: "through the pooler".into(), ..Default::default() };
    tasks.create_task(with_deadline(create, Some(&tokens.access_token), Duration::from_secs(5))).await.unwrap();
    let list = ListTasksRequest::default();
    let listed = tasks.list_tasks(with_deadline(list, Some(&tokens.access_token), Duration::from_secs(5))).await;
    assert_eq!(listed.unwrap().into_inner().tasks.len(), 1);
    auth.logout(LogoutRequest { refresh_token: tokens.refresh_token.clone() }).await.unwrap();
    let list = || {
        let request = with_deadline(ListTasksRequest::default(), Some(&tokens.access_token), Duration::from_secs(5));
        let mut tasks = tasks.clone();
        async move { tasks.list_tasks(request).await }
    };
    testkit::refused_within(Duration::from_secs(1), Code::Unauthenticated, "SESSION_REVOKED", list).await;
    // The migrations ran on the direct connection: their lock is not left on a pooled one.
    let pool = pg.pool().await;
    let locks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetch_one(&pool).await.unwrap();
    assert_eq!(locks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_mixes_up_the_statements_of_plain_sqlx() {
    let Some(_) = PGBOUNCER.require() else { return };
    let pg = DedicatedPostgres::start();
    let bouncer = bouncer(&pg, "transaction");
    let options: PgConnectOptions = bouncer.url("postgres").parse().unwrap();
    // With the statement cache off, too: sqlx still names each statement and keeps it.
    let pool =
        PgPoolOptions::new().max_connections(10).connect_with(options.statement_cache_capacity(0)).await.unwrap();
    let failures = failures_of_1000_statements(pool).await;
    println!("plain sqlx: {failures} of 1000 statements failed through transaction pooling");
    assert!(failures > 0, "sqlx now works through transaction pooling: DB_POOL_MODE may no longer be needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_in_transaction_mode_runs_every_statement_and_leaves_none_behind() {
    let Some(_) = PGBOUNCER.require() else { return };
    let pg = DedicatedPostgres::start();
    let bouncer = bouncer(&pg, "transaction");
    let options: PgConnectOptions = bouncer.url("postgres").parse().unwrap();
    let db = Db::new(PgPoolOptions::new().max_connections(10).connect_lazy_with(options), PoolMode::Transaction);
    assert_eq!(failures_of_1000_statements(db.clone()).await, 0);
    // Statements inside transactions of our own, too.
    for n in 0..20i64 {
        let mut tx = db.begin().await.unwrap();
        let first: i64 = sqlx::query_scalar("SELECT $1::bigint").bind(n).fetch_one(&mut tx).await.unwrap();
        let second: i64 = sqlx::query_scalar("SELECT $1::bigint * 2").bind(first).fetch_one(&mut tx).await.unwrap();
        assert_eq!(second, n * 2);
        tx.commit().await.unwrap();
    }
    // Ten overlapping transactions, so each holds a server connection of its own: none of them
    // finds a prepared statement left by an earlier client.
    let mut handles = Vec::new();
    for _ in 0..10 {
        let db = db.clone();
        handles.push(tokio::spawn(async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_prepared_statements, pg_sleep(0.2)")
                .fetch_one(&db)
                .await
                .unwrap()
        }));
    }
    for handle in handles {
        assert_eq!(handle.await.unwrap(), 0, "a prepared statement was left on a server connection");
    }
}

/// Ten tasks run 100 statements each through `pool`; how many failed.
async fn failures_of_1000_statements<P>(pool: P) -> usize
where
    P: Clone + Send + Sync + 'static,
    for<'a> &'a P: sqlx::PgExecutor<'a>,
{
    let mut handles = Vec::new();
    for i in 0..10i64 {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            let mut failures = 0;
            for n in 0..100i64 {
                let sum: Result<i64, _> =
                    sqlx::query_scalar("SELECT $1::bigint + $2::bigint").bind(i).bind(n).fetch_one(&pool).await;
                match sum {
                    Ok(sum) => assert_eq!(sum, i + n),
                    Err(_) => failures += 1,
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for handle in handles {
        failures += handle.await.unwrap();
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_queued_in_the_pooler_is_answered_unavailable_before_its_deadline() {
    let Some(_) = PGBOUNCER.require() else { return };
    // Every server connection of the pooler is taken by transactions of another client, so the
    // service's statements wait in PgBouncer's queue, where no statement_timeout reaches them.
    let pg = DedicatedPostgres::start();
    let bouncer = bouncer(&pg, "transaction");
    let db = todo_shared::database::DbConfig {
        url: SecretString::from(bouncer.url("postgres")),
        direct_url: Some(SecretString::from(pg.url())),
        pool_mode: PoolMode::Transaction,
        ..pg.db_config()
    };
    let services = faults::Services::spawn(db).await;
    for addr in [services.auth.addr, services.task.addr] {
        wait_for_health(addr, ServingStatus::Serving, Duration::from_secs(20)).await.expect("serving");
    }
    let mut auth = AuthServiceClient::new(lazy_channel(services.auth.addr));
    let mut tasks = TaskServiceClient::new(lazy_channel(services.task.addr));
    let request = SignUpRequest { email: "queued@example.com".into(), password: testkit::PASSWORD.into() };
    let token = auth.sign_up(request).await.unwrap().into_inner().tokens.unwrap().access_token;

    // The pooler's pool for this database and user is 20 server connections (localpg's
    // pgbouncer.ini): hold them all, idle in transaction (simple protocol, nothing prepared).
    let options: PgConnectOptions = bouncer.url("postgres").parse().unwrap();
    let hog = PgPoolOptions::new().max_connections(20).connect_lazy_with(options);
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut tx = hog.begin().await.unwrap();
        sqlx::Executor::execute(&mut *tx, "SELECT 1").await.unwrap();
        held.push(tx);
    }
    let started = Instant::now();
    let list = ListTasksRequest::default();
    let err = tasks.list_tasks(with_deadline(list, Some(&token), Duration::from_secs(1))).await.unwrap_err();
    let took = started.elapsed();
    testkit::assert_error(&err, Code::Unavailable, "DATABASE_UNAVAILABLE");
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    println!("a call queued in the pooler: UNAVAILABLE after {took:?} of its 1 s");

    for tx in held {
        tx.rollback().await.unwrap();
    }
    let list = ListTasksRequest::default();
    tasks.list_tasks(with_deadline(list, Some(&token), Duration::from_secs(5))).await.expect("served again");
}
