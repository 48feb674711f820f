//! Crash safety: the real task-service binary is killed with SIGKILL while clients create tasks.
//! Nothing acknowledged is lost, nothing is half-written (a task without its request id row or
//! the other way round), a restart serves at once, and retrying a create that failed in the
//! crash (same request_id) makes exactly one task.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::process::{ServiceProcess, free_addr, lazy_channel, until_serving};
use testkit::test_database::TestDatabase;
use todo_proto::task::v1::CreateTaskRequest;
use todo_proto::task::v1::task_service_client::TaskServiceClient;

/// The real binary with a drain time of `drain_seconds`.
fn start(db: &TestDatabase, addr: std::net::SocketAddr, drain_seconds: &str) -> ServiceProcess {
    ServiceProcess::start(
        env!("CARGO_BIN_EXE_task-service"),
        "TASK_ADDR",
        addr,
        db,
        &[("RUN_MIGRATIONS", "false"), ("SHUTDOWN_DRAIN_SECONDS", drain_seconds)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_nothing_acknowledged_and_a_restart_serves_at_once() {
    let db = TestDatabase::new().await;
    let auth = testkit::spawn_auth(testkit::auth_config(&db)).await;
    let mut auth_client =
        todo_proto::auth::v1::auth_service_client::AuthServiceClient::new(testkit::channel(auth.addr).await);
    let mut tokens = Vec::new();
    for i in 0..3 {
        let request = todo_proto::auth::v1::SignUpRequest {
            email: format!("crash{i}@example.com"),
            password: testkit::PASSWORD.into(),
        };
        tokens.push(auth_client.sign_up(request).await.unwrap().into_inner().tokens.unwrap().access_token);
    }
    let addr = free_addr();
    let process = start(&db, addr, "1");
    until_serving(addr).await;

    // request_id -> (token, acknowledged)
    let outcomes: Arc<Mutex<BTreeMap<String, (String, bool)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (user, token) in tokens.iter().enumerate() {
        let (outcomes, stop, token) = (outcomes.clone(), stop.clone(), token.clone());
        writers.push(tokio::spawn(async move {
            let mut tasks = TaskServiceClient::new(lazy_channel(addr));
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("u{user}-{n}");
                let request = CreateTaskRequest { title: id.clone(), request_id: id.clone(), ..Default::default() };
                let mut request = testkit::authed(request, &token);
                request.set_timeout(Duration::from_secs(2));
                let ok = tasks.create_task(request).await.is_ok();
                outcomes.lock().unwrap().insert(id, (token.clone(), ok));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    process.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let process = start(&db, addr, "1");
    let restart = until_serving(addr).await;
    println!("restarted task-service SERVING {restart:?} after its start");
    assert!(restart < Duration::from_secs(5), "a restart serves at once, took {restart:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let acknowledged: Vec<&String> = outcomes.iter().filter(|(_, (_, ok))| *ok).map(|(id, _)| id).collect();
    let failed: Vec<(&String, &String)> =
        outcomes.iter().filter(|(_, (_, ok))| !*ok).map(|(id, (token, _))| (id, token)).collect();
    println!("{} creates acknowledged, {} failed around the kill", acknowledged.len(), failed.len());
    assert!(!failed.is_empty(), "the kill interrupted no call: the test proved nothing");
    let stored: Vec<String> = sqlx::query_scalar("SELECT title FROM tasks").fetch_all(&db.pool).await.unwrap();
    for id in &acknowledged {
        assert!(stored.contains(id), "{id} was acknowledged but is not stored");
    }
    let half_written: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM task_create_requests r WHERE r.task_id = t.id)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(half_written, 0, "tasks without their request id row");

    // Retrying what failed, with the same request_id, gives exactly one task each.
    let mut tasks = TaskServiceClient::new(lazy_channel(addr));
    for (id, token) in &failed {
        let request = CreateTaskRequest { title: (*id).clone(), request_id: (*id).clone(), ..Default::default() };
        tasks.create_task(testkit::authed(request, token)).await.expect("a retry after the restart succeeds");
    }
    let duplicates: i64 =
        sqlx::query_scalar("SELECT count(*) FROM (SELECT title FROM tasks GROUP BY title HAVING count(*) > 1) d")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(duplicates, 0, "a retried create made a second task");
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&db.pool).await.unwrap();
    assert_eq!(total as usize, outcomes.len(), "one task per request id, no more, no less");
    process.kill();
}

/// A call's request id and how it ended.
type Answer = (String, Result<(), tonic::Status>);

/// True when the client's own transport turned the call away before the server took it, after
/// the server's GOAWAY: hyper dropped it unsent (CANCELLED), or h2 failed it because the
/// server's GOAWAY said streams after the last one it took were not processed (INTERNAL).
/// tonic keeps the transport error as the status's source. tonic does not retry these.
fn never_taken_by_the_server(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>()
            && h2.is_go_away()
            && h2.is_remote()
            && h2.reason() == Some(h2::Reason::NO_ERROR)
        {
            return true;
        }
        source = error.source();
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_load_answers_the_calls_in_flight_and_exits_0() {
    let db = TestDatabase::new().await;
    let auth = testkit::spawn_auth(testkit::auth_config(&db)).await;
    let mut auth_client =
        todo_proto::auth::v1::auth_service_client::AuthServiceClient::new(testkit::channel(auth.addr).await);
    let request =
        todo_proto::auth::v1::SignUpRequest { email: "term@example.com".into(), password: testkit::PASSWORD.into() };
    let token = auth_client.sign_up(request).await.unwrap().into_inner().tokens.unwrap().access_token;
    let addr = free_addr();
    let process = start(&db, addr, "3");
    until_serving(addr).await;

    let codes: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for worker in 0..4 {
        let (codes, stop, token) = (codes.clone(), stop.clone(), token.clone());
        writers.push(tokio::spawn(async move {
            let mut tasks = TaskServiceClient::new(lazy_channel(addr));
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let id = format!("w{worker}-{n}");
                let request = CreateTaskRequest { title: id.clone(), request_id: id.clone(), ..Default::default() };
                let mut request = testkit::authed(request, &token);
                request.set_timeout(Duration::from_secs(5));
                let result = tasks.create_task(request).await.map(|_| ());
                codes.lock().unwrap().push((id, result));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // A drain of 3 s: the calls in flight at SIGTERM finish well within it on a loaded machine;
    // the exit must come in time.
    let exit = tokio::task::spawn_blocking(move || process.terminate(Duration::from_secs(8))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let status = exit.expect("task-service exits within the drain time after SIGTERM");
    assert!(status.success(), "exit status {status:?}");

    // No call the server took was cut or refused: every call either got its answer (OK) or never
    // reached the server (the client's transport turned it away after the GOAWAY, or the port
    // was closed: UNAVAILABLE from the transport, with no ErrorInfo). An UNAVAILABLE of the
    // server's own, such as DATABASE_UNAVAILABLE from a pool closed while calls were still in
    // flight, is a call taken and not served: it counts as cut. And the database agrees: every OK
    // is stored and nothing that failed is, so no call was done without its answer reaching the
    // client.
    let codes = std::mem::take(&mut *codes.lock().unwrap());
    let failed: Vec<&Answer> = codes.iter().filter(|(_, r)| r.is_err()).collect();
    let cut: Vec<&Answer> = failed
        .iter()
        .copied()
        .filter(|(_, r)| {
            let status = r.as_ref().unwrap_err();
            let refused_unsent = status.code() == tonic::Code::Unavailable && testkit::reason(status).is_empty();
            !refused_unsent && !never_taken_by_the_server(status)
        })
        .collect();
    let turned_away = failed.iter().filter(|(_, r)| r.as_ref().is_err_and(never_taken_by_the_server)).count();
    println!(
        "{} calls answered OK, {} failed around the stop ({turned_away} turned away by the client's transport)",
        codes.len() - failed.len(),
        failed.len()
    );
    assert!(cut.is_empty(), "calls cut off: {cut:?}");
    let stored: Vec<String> = sqlx::query_scalar("SELECT title FROM tasks").fetch_all(&db.pool).await.unwrap();
    for (id, result) in &codes {
        assert_eq!(stored.contains(id), result.is_ok(), "{id}: {result:?}, stored: {}", stored.contains(id));
    }
    let unique: std::collections::BTreeSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "a request id made two tasks");
}
