//! PgBouncer (Debian's 1.18) in front of the services.
//!
//! What these tests establish:
//! - In session mode, with `DATABASE_DIRECT_URL` for migrations and LISTEN, the services work as
//!   they do directly (and `TEST_VIA_PGBOUNCER=1` runs the whole api suites that way).
//! - In transaction mode sqlx 0.9 is not safe, whatever `DB_STATEMENT_CACHE` says: with the
//!   statement cache off sqlx still prepares a *named* statement per execution (and never
//!   closes it), so clients sharing a server connection collide; its unnamed statements would
//!   be parsed and bound in two round trips, between which the pooler may switch connections.
//!   Transaction pooling needs PgBouncer 1.21 or later with `max_prepared_statements` set (as
//!   Neon's pooler has), with the statement cache left on.

use faults::{DedicatedPostgres, lazy_channel, wait_for_health, with_deadline};
use localpg::pgbouncer::PgBouncer;
use secrecy::SecretString;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::{Duration, Instant};
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{LogoutRequest, SignUpRequest};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, ListTasksRequest};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn bouncer(pg: &DedicatedPostgres, mode: &str) -> PgBouncer {
    let dir = std::env::temp_dir().join(format!("todo-fault-pgb-{}", uuid::Uuid::new_v4().simple()));
    PgBouncer::start(&pg.server, &dir, mode).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_behind_pgbouncer_migrate_and_listen_on_the_direct_url() {
    let pg = DedicatedPostgres::start();
    let bouncer = bouncer(&pg, "session");
    let db = todo_shared::config::DbConfig {
        url: SecretString::from(bouncer.url("postgres")),
        direct_url: Some(SecretString::from(pg.url())),
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
    auth.logout(LogoutRequest { refresh_token: tokens.refresh_token.clone() }).await.unwrap();
    let started = Instant::now();
    loop {
        let list = ListTasksRequest::default();
        match tasks.list_tasks(with_deadline(list, Some(&tokens.access_token), Duration::from_secs(5))).await {
            Err(status) if status.code() == Code::Unauthenticated => break,
            other => assert!(started.elapsed() < Duration::from_secs(1), "still accepted after 1 s: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The migrations ran on the direct connection: their lock is not left on a pooled one.
    let pool = pg.pool().await;
    let locks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetch_one(&pool).await.unwrap();
    assert_eq!(locks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_statement_cache_off_sqlx_still_names_each_statement_and_keeps_it() {
    // Why DB_STATEMENT_CACHE=false is no answer to transaction pooling (and leaks server memory
    // on a direct connection): if this starts failing, sqlx has changed and the README's
    // PgBouncer advice should be revisited.
    let pg = DedicatedPostgres::start();
    let options: PgConnectOptions = pg.url().parse().unwrap();
    let mut conn = options.statement_cache_capacity(0).connect().await.unwrap();
    for n in 0..50i64 {
        let _: i64 = sqlx::query_scalar("SELECT $1::bigint").bind(n).fetch_one(&mut conn).await.unwrap();
    }
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements")
        .persistent(false)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 50, "one named statement per execution, none closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_mixes_up_the_named_statements_of_clients() {
    let pg = DedicatedPostgres::start();
    let bouncer = bouncer(&pg, "transaction");
    let options: PgConnectOptions = bouncer.url("postgres").parse().unwrap();
    let pool =
        PgPoolOptions::new().max_connections(10).connect_with(options.statement_cache_capacity(0)).await.unwrap();
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
    println!("{failures} of 1000 statements failed through transaction pooling with the statement cache off");
    assert!(failures > 0, "sqlx now works through transaction pooling: revisit the README's PgBouncer advice");
}
