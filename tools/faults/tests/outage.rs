//! A database outage under load: writers and readers keep calling both services while their
//! PostgreSQL is stopped for 3 s and started again (`OUTAGE_ROUNDS=<n>` repeats it: a soak). During the outage calls fail fast with
//! UNAVAILABLE (never INTERNAL, never past the client's deadline) and health turns NOT_SERVING;
//! within 2 s of the database being back both services serve again, without a restart; every
//! CreateTask that returned OK is in the database. The same again behind PgBouncer in transaction
//! mode, where the pooler stays up and PostgreSQL behind it goes away. And a deadline that passes
//! while PostgreSQL is frozen (SIGSTOP) is answered DEADLINE_EXCEEDED, never CANCELLED.

use faults::{DedicatedPostgres, Services, health, lazy_channel, wait_for_health, with_deadline};
use localpg::pgbouncer::PgBouncer;
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{GetCurrentUserRequest, SignUpRequest};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, ListTasksRequest};
use todo_shared::database::DbConfig;
use todo_shared::database::PoolMode;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// The deadline every call of the load carries.
const DEADLINE: Duration = Duration::from_secs(5);
const OUTAGE: Duration = Duration::from_secs(3);
/// The promise: both services serve again this soon after the database is back.
const RECOVERY: Duration = Duration::from_secs(2);

struct Outcome {
    call: &'static str,
    started: Instant,
    took: Duration,
    code: Code,
    reason: String,
    /// The title of a created task (unique per call).
    title: Option<String>,
}

type Log = Arc<Mutex<Vec<Outcome>>>;
/// When, which server, what its health said.
type HealthSample = (Instant, SocketAddr, Option<ServingStatus>);

fn record<T>(
    log: &Log,
    call: &'static str,
    started: Instant,
    result: &Result<T, tonic::Status>,
    title: Option<String>,
) {
    let (code, reason) = match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), testkit::reason(status)),
    };
    log.lock().unwrap().push(Outcome { call, started, took: started.elapsed(), code, reason, title });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_fast_shutdown() {
    outage("fast", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_immediate_shutdown() {
    outage("immediate", false).await;
}

/// The same outage behind PgBouncer in transaction mode (the pooler stays up; PostgreSQL behind
/// it goes away), as on Neon's pooled endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_behind_pgbouncer_in_transaction_mode() {
    let Some(_) = localpg::system_tool::PGBOUNCER.require() else { return };
    outage("fast", true).await;
}

fn signed_secs(at: Instant, origin: Instant) -> f64 {
    if at >= origin { (at - origin).as_secs_f64() } else { -(origin - at).as_secs_f64() }
}

/// One outage at a time: two at once on a small machine measure the machine, not the services.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn outage(mode: &str, via_pgbouncer: bool) {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut pg = DedicatedPostgres::start();
    let (db, _bouncer) = match via_pgbouncer {
        true => {
            let dir = std::env::temp_dir().join(format!("todo-fault-pgb-{}", uuid::Uuid::new_v4().simple()));
            let bouncer = PgBouncer::start(&pg.server, &dir, "transaction").unwrap_or_else(|e| panic!("{e}"));
            let db = DbConfig {
                url: SecretString::from(bouncer.url("postgres")),
                direct_url: Some(SecretString::from(pg.url())),
                pool_mode: PoolMode::Transaction,
                ..pg.db_config()
            };
            (db, Some(bouncer))
        }
        false => (pg.db_config(), None),
    };
    let services = Services::spawn(db).await;
    for addr in [services.auth.addr, services.task.addr] {
        wait_for_health(addr, ServingStatus::Serving, Duration::from_secs(20)).await.expect("serving before the test");
    }
    let auth = AuthServiceClient::new(lazy_channel(services.auth.addr));
    let tasks = TaskServiceClient::new(lazy_channel(services.task.addr));
    let mut tokens = Vec::new();
    for i in 0..3 {
        let request = SignUpRequest { email: format!("load{i}@example.com"), password: testkit::PASSWORD.into() };
        tokens.push(auth.clone().sign_up(request).await.unwrap().into_inner().tokens.unwrap().access_token);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let log: Log = Arc::default();
    let mut workers = Vec::new();
    for (user, token) in tokens.iter().enumerate() {
        {
            let (stop, log, mut tasks, token) = (stop.clone(), log.clone(), tasks.clone(), token.clone());
            workers.push(tokio::spawn(async move {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let title = format!("u{user}-n{n}");
                    let request =
                        CreateTaskRequest { title: title.clone(), request_id: title.clone(), ..Default::default() };
                    let started = Instant::now();
                    let result = tasks.create_task(with_deadline(request, Some(&token), DEADLINE)).await;
                    record(&log, "CreateTask", started, &result, Some(title));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
        {
            let (stop, log, mut tasks, token) = (stop.clone(), log.clone(), tasks.clone(), token.clone());
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let request = ListTasksRequest { page_size: 10, ..Default::default() };
                    let result = tasks.list_tasks(with_deadline(request, Some(&token), DEADLINE)).await;
                    record(&log, "ListTasks", started, &result, None);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
        {
            let (stop, log, mut auth, token) = (stop.clone(), log.clone(), auth.clone(), token.clone());
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result =
                        auth.get_current_user(with_deadline(GetCurrentUserRequest {}, Some(&token), DEADLINE)).await;
                    record(&log, "GetCurrentUser", started, &result, None);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }
    }
    let health_log: Arc<Mutex<Vec<HealthSample>>> = Arc::default();
    let watcher = {
        let (stop, health_log) = (stop.clone(), health_log.clone());
        let addrs = [services.auth.addr, services.task.addr];
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for addr in addrs {
                    let status = health(addr).await;
                    health_log.lock().unwrap().push((Instant::now(), addr, status));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    // OUTAGE_ROUNDS=<n> repeats the outage on the same services (a soak); the default is one.
    let rounds: usize = std::env::var("OUTAGE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let mut outages = Vec::new();
    for _ in 0..rounds {
        let down_at = Instant::now();
        pg.stop(mode);
        tokio::time::sleep(OUTAGE).await;
        pg.start_again();
        let up_at = Instant::now();
        outages.push((down_at, up_at));
        tokio::time::sleep(RECOVERY + Duration::from_secs(2)).await;
    }
    let end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    watcher.await.unwrap();

    let log = std::mem::take(&mut *log.lock().unwrap());
    let mut counts: BTreeMap<(&str, String), (usize, Duration)> = BTreeMap::new();
    for o in &log {
        let entry = counts.entry((o.call, format!("{:?} {}", o.code, o.reason))).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(o.took);
    }
    println!(
        "mode {mode}, via PgBouncer {via_pgbouncer}: {rounds} outage(s) of {OUTAGE:?}, calls by outcome (count, slowest):"
    );
    for ((call, outcome), (count, slowest)) in &counts {
        println!("  {call:15} {outcome:40} {count:5} {slowest:?}");
    }

    // Nothing but OK or UNAVAILABLE DATABASE_UNAVAILABLE, and never past the deadline.
    for o in &log {
        assert!(
            o.code == Code::Ok || (o.code == Code::Unavailable && o.reason == "DATABASE_UNAVAILABLE"),
            "{} got {:?} {}",
            o.call,
            o.code,
            o.reason
        );
        assert!(o.took < DEADLINE, "{} took {:?}", o.call, o.took);
    }
    for call in ["CreateTask", "ListTasks", "GetCurrentUser"] {
        let refused = log.iter().filter(|o| o.call == call && o.code == Code::Unavailable).count();
        assert!(refused > 0, "{call}: no call saw the outage");
    }
    let health_log = std::mem::take(&mut *health_log.lock().unwrap());
    for (round, &(down_at, up_at)) in outages.iter().enumerate() {
        // Until the next outage begins (calls started just before it may meet it).
        let window_end = outages.get(round + 1).map(|(next, _)| *next - Duration::from_millis(500)).unwrap_or(end);
        for addr in [services.auth.addr, services.task.addr] {
            // Health turned NOT_SERVING during the outage, on both.
            assert!(
                health_log.iter().any(|(at, a, s)| *a == addr
                    && *at > down_at
                    && *at < up_at
                    && *s == Some(ServingStatus::NotServing)),
                "round {round}: {addr} never reported NOT_SERVING during the outage"
            );
            let changes: Vec<String> = health_log
                .iter()
                .filter(|(at, a, _)| *a == addr && *at > down_at - Duration::from_secs(1) && *at < window_end)
                .scan(None, |last, (at, _, s)| {
                    let changed = *last != Some(*s);
                    *last = Some(*s);
                    Some(changed.then(|| format!("{:?} at {:+.2}s", s, signed_secs(*at, up_at))))
                })
                .flatten()
                .collect();
            println!("round {round}: health of {addr} (relative to PostgreSQL being back): {}", changes.join(", "));
            // From RECOVERY after the database is back, SERVING every time.
            let late: Vec<_> = health_log
                .iter()
                .filter(|(at, a, _)| *a == addr && *at > up_at + RECOVERY && *at < window_end)
                .collect();
            assert!(!late.is_empty());
            assert!(
                late.iter().all(|(_, _, s)| *s == Some(ServingStatus::Serving)),
                "round {round}: {addr} not SERVING {RECOVERY:?} after the database came back"
            );
        }
        // Once health says NOT_SERVING, calls are refused at once instead of waiting for a connection.
        let noticed = [services.auth.addr, services.task.addr]
            .map(|addr| {
                health_log
                    .iter()
                    .find(|(at, a, s)| *a == addr && *at > down_at && *s == Some(ServingStatus::NotServing))
                    .map(|(at, _, _)| *at)
                    .expect("seen above")
            })
            .into_iter()
            .max()
            .unwrap();
        println!("round {round}: outage noticed by both {:?} after the stop began", noticed - down_at);
        let refused_fast: Vec<&Outcome> =
            log.iter().filter(|o| o.started > noticed + Duration::from_millis(300) && o.started < up_at).collect();
        assert!(refused_fast.len() > 10, "round {round}: too few calls while NOT_SERVING: {}", refused_fast.len());
        for o in refused_fast {
            assert!(o.took < Duration::from_millis(500), "{} took {:?} while health was NOT_SERVING", o.call, o.took);
        }
        // Every call started from RECOVERY after the database is back succeeded.
        let late: Vec<&Outcome> =
            log.iter().filter(|o| o.started > up_at + RECOVERY && o.started < window_end).collect();
        assert!(late.len() > 10, "round {round}: too few calls after the recovery: {}", late.len());
        for o in &late {
            assert_eq!(o.code, Code::Ok, "{} started {:?} after the database came back", o.call, o.started - up_at);
        }
        let first_ok = log.iter().filter(|o| o.started > up_at && o.code == Code::Ok).map(|o| o.started).min();
        if let Some(first_ok) = first_ok {
            println!("round {round}: first successful call started {:?} after PostgreSQL was back", first_ok - up_at);
        }
    }

    // Nothing acknowledged is lost.
    let pool = pg.pool().await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT title FROM tasks").fetch_all(&pool).await.unwrap();
    let stored: std::collections::HashSet<String> = stored.into_iter().collect();
    let acknowledged: Vec<&String> =
        log.iter().filter(|o| o.call == "CreateTask" && o.code == Code::Ok).filter_map(|o| o.title.as_ref()).collect();
    assert!(!acknowledged.is_empty());
    for title in &acknowledged {
        assert!(stored.contains(*title), "task {title} was acknowledged but is not in the database");
    }
    // And no task without its request id, or the other way round.
    let orphans: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM tasks t WHERE NOT EXISTS
                   (SELECT 1 FROM task_create_requests r WHERE r.task_id = t.id))
              + (SELECT count(*) FROM task_create_requests r WHERE NOT EXISTS
                   (SELECT 1 FROM tasks t WHERE t.id = r.task_id))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "half-written creates");
    println!("{} creates acknowledged, all stored ({} tasks in the database)", acknowledged.len(), stored.len());
    services.auth.stop().await.unwrap();
    services.task.stop().await.unwrap();
}

/// Sends SIGSTOP to every process of a PostgreSQL, and SIGCONT when dropped, whatever the test did.
struct Frozen(Vec<u32>);

impl Frozen {
    fn signal(pids: &[u32], name: &str) {
        for pid in pids {
            let _ = std::process::Command::new("kill").args([name, &pid.to_string()]).status();
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        Self::signal(&self.0, "-CONT");
    }
}

/// A unary gRPC call by hand over HTTP/2, sending `grpc-timeout: <deadline>` without timing the
/// call out on this side (tonic's client would, at the same instant, and answer CANCELLED itself):
/// the server's own status code and message, or None if it did not answer within 5 s more.
async fn call_with_deadline(
    addr: SocketAddr,
    path: &str,
    message: impl prost::Message,
    token: &str,
    deadline: Duration,
) -> Option<(i32, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .header("grpc-timeout", format!("{}m", deadline.as_millis()))
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    body.send_data(frame.into(), true).unwrap();
    let answer = async {
        let response = response.await.unwrap();
        let headers = response.headers().clone();
        let mut body = response.into_body();
        while let Some(data) = body.data().await {
            let _ = data.unwrap();
        }
        // A trailers-only answer carries the status in its headers.
        let trailers = body.trailers().await.unwrap().unwrap_or(headers);
        let code = trailers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(-1);
        let message = trailers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        (code, message)
    };
    tokio::time::timeout(deadline + Duration::from_secs(5), answer).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_while_the_database_hangs_is_deadline_exceeded_never_cancelled() {
    // A frozen PostgreSQL (every process stopped with SIGSTOP) answers nothing, so
    // statement_timeout cannot end the calls: the client's grpc-timeout passes in the server.
    // tonic's own timer would answer CANCELLED "Timeout expired", which clients that retry on
    // DEADLINE_EXCEEDED or UNAVAILABLE give up on.
    let _one = ONE_AT_A_TIME.lock().await;
    let pg = DedicatedPostgres::start();
    let services = Services::spawn(pg.db_config()).await;
    for addr in [services.auth.addr, services.task.addr] {
        wait_for_health(addr, ServingStatus::Serving, Duration::from_secs(20)).await.expect("serving before the test");
    }
    let mut auth = AuthServiceClient::new(lazy_channel(services.auth.addr));
    let request = SignUpRequest { email: "frozen@example.com".into(), password: testkit::PASSWORD.into() };
    let token = auth.sign_up(request).await.unwrap().into_inner().tokens.unwrap().access_token;

    let processes = pg.server.processes();
    assert!(processes.len() > 2, "the postmaster and its children: {processes:?}");
    let frozen = Frozen(processes);
    Frozen::signal(&frozen.0, "-STOP");
    // Calls on both services, each with a 400 ms deadline, one after another, for 3 s: at first
    // they hang on the frozen database; once the health probe notices (2 s), they are refused.
    let started = Instant::now();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(3) {
        n += 1;
        let deadline = Duration::from_millis(400);
        let create = CreateTaskRequest { title: format!("frozen {n}"), ..Default::default() };
        let (task, auth_addr) = (services.task.addr, services.auth.addr);
        let answers = [
            call_with_deadline(task, "/todo.task.v1.TaskService/CreateTask", create, &token, deadline).await,
            call_with_deadline(
                task,
                "/todo.task.v1.TaskService/ListTasks",
                ListTasksRequest::default(),
                &token,
                deadline,
            )
            .await,
            call_with_deadline(
                auth_addr,
                "/todo.auth.v1.AuthService/GetCurrentUser",
                GetCurrentUserRequest {},
                &token,
                deadline,
            )
            .await,
        ];
        for answer in answers {
            let (code, message) = answer.expect("the server answers a call whose deadline passed");
            let code = Code::from_i32(code);
            *outcomes.entry(format!("{code:?}")).or_default() += 1;
            assert!(
                matches!(code, Code::DeadlineExceeded | Code::Unavailable),
                "a call during the outage got {code:?} {message:?}"
            );
        }
    }
    drop(frozen);
    println!("calls on a frozen database, by outcome: {outcomes:?}");
    assert!(outcomes.contains_key("DeadlineExceeded"), "some calls met their deadline in the server: {outcomes:?}");
}
