//! `cargo run --release -p bench -- all [--quick] [--pgbouncer]`: drives the real services over
//! gRPC and prints one JSON object per line per scenario, next to pgbench on the same statements
//! (straight to PostgreSQL). With `--pgbouncer` the services reach PostgreSQL through PgBouncer in
//! transaction mode (`DB_POOL_MODE=transaction`).
//!
//! Everything is its own: a private PostgreSQL, both services built in release mode and run as
//! separate processes, data seeded by SQL. See docs/BENCHMARKS.md for what the figures mean.

mod cpu;
mod load;
mod pgbench;
mod seed;
mod stack;
mod watch;

use load::{LoadResult, Timing};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{GetCurrentUserRequest, LoginRequest, ValidateTokenRequest};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::*;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// (owner, task id) of the tasks one mixed-scenario worker created, for it to delete later.
type CreatedTasks = std::sync::Mutex<Vec<(i64, i64)>>;

/// Calls in flight, as in the targets ("p99 under 10 ms at 32 in flight").
const CONCURRENCY: usize = 32;
/// HTTP/2 connections the callers share.
const CONNECTIONS: usize = 4;
/// Users of the small data set, each with 200 tasks.
const USERS: i64 = 100;

struct Options {
    quick: bool,
    /// The services go through PgBouncer in transaction mode.
    pgbouncer: bool,
}

impl Options {
    fn timing(&self) -> Timing {
        if self.quick {
            Timing { warmup: Duration::from_secs(1), measure: Duration::from_secs(4) }
        } else {
            Timing { warmup: Duration::from_secs(3), measure: Duration::from_secs(15) }
        }
    }
}

/// What the callers share: connections, and a token per user.
struct Clients {
    tasks: Vec<TaskServiceClient<Channel>>,
    auth: Vec<AuthServiceClient<Channel>>,
    /// `authorization` metadata and raw token of user n at index n-1.
    bearer: Vec<MetadataValue<tonic::metadata::Ascii>>,
    tokens: Vec<String>,
}

impl Clients {
    fn task(&self, worker: usize) -> TaskServiceClient<Channel> {
        self.tasks[worker % self.tasks.len()].clone()
    }

    fn auth(&self, worker: usize) -> AuthServiceClient<Channel> {
        self.auth[worker % self.auth.len()].clone()
    }

    fn request<T>(&self, user: i64, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.bearer[(user - 1) as usize].clone());
        request
    }
}

async fn channels(addr: std::net::SocketAddr) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        out.push(Channel::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?);
    }
    Ok(out)
}

/// A cheap deterministic spread over users: worker and iteration mixed.
fn pick(worker: usize, iteration: u64, n: i64) -> i64 {
    let x = (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ iteration.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (x.rotate_left(17) % n as u64) as i64 + 1
}

fn line(scenario: &str, concurrency: usize, result: &LoadResult, extra: Value, services: &[&stack::Service]) -> Value {
    let mut rss = serde_json::Map::new();
    for service in services {
        rss.insert(service.name.into(), json!(service.rss_mb().1));
    }
    let mut out = json!({
        "scenario": scenario,
        "concurrency": concurrency,
        "seconds": (result.seconds * 100.0).round() / 100.0,
        "requests": result.requests,
        "errors": result.errors,
        "rps": result.rps().round(),
        "p50_ms": result.percentile_ms(0.50),
        "p99_ms": result.percentile_ms(0.99),
        "rss_mb": rss,
        "cpu_ms_per_request": cpu::per_request(&result.cpu.0, &result.cpu.1, result.requests),
    });
    if let Some(e) = &result.first_error {
        out["first_error"] = json!(e);
    }
    if let (Value::Object(out), Value::Object(extra)) = (&mut out, extra) {
        out.extend(extra);
    }
    out
}

fn status_text(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

async fn run_all(options: Options) -> anyhow::Result<()> {
    let timing = options.timing();
    let bin_dir = tokio::task::spawn_blocking(stack::build_services).await??;
    let binaries = localpg::find_binaries().map_err(anyhow::Error::msg)?;
    let pg = tokio::task::spawn_blocking(stack::start_postgres).await??;
    let url = pg.url("postgres");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await?;
    todo_shared::database::migrate(&pool).await?;
    let bouncer = match options.pgbouncer {
        true => {
            let dir = std::env::temp_dir().join(format!("todo-bench-pgb-{}", uuid::Uuid::new_v4().simple()));
            Some(localpg::pgbouncer::PgBouncer::start(&pg, &dir, "transaction").map_err(anyhow::Error::msg)?)
        }
        false => None,
    };
    let env = match &bouncer {
        Some(bouncer) => vec![
            ("DATABASE_URL", bouncer.url("postgres")),
            ("DATABASE_DIRECT_URL", url.clone()),
            ("DB_POOL_MODE", "transaction".into()),
            ("RUN_MIGRATIONS", "false".into()),
        ],
        None => vec![("DATABASE_URL", url.clone()), ("RUN_MIGRATIONS", "false".into())],
    };
    println!("{}", json!({"scenario": "setup", "pgbouncer": options.pgbouncer}));

    // Startup and idle memory, with migrations already applied.
    let (task_service, task_startup) = stack::spawn_service(&bin_dir, "task-service", "TASK_ADDR", &env).await?;
    let (auth_service, auth_startup) = stack::spawn_service(&bin_dir, "auth-service", "AUTH_ADDR", &env).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let services = [&auth_service, &task_service];
    let pids = [("auth-service", auth_service.pid()), ("task-service", task_service.pid())];
    let probe: load::CpuProbe = Arc::new(move || cpu::snapshot(&pids));
    println!(
        "{}",
        json!({
            "scenario": "startup",
            "serving_ms": {"auth-service": auth_startup.as_millis(), "task-service": task_startup.as_millis()},
            "idle_rss_mb": {"auth-service": auth_service.rss_mb().0, "task-service": task_service.rss_mb().0},
        })
    );

    // The small data set; one login per user for its token (at the configured bcrypt cost).
    let hash = tokio::task::spawn_blocking(|| bcrypt::hash(seed::PASSWORD, 12)).await??;
    seed::users(&pool, 1, USERS, &hash).await?;
    seed::tasks(&pool, 1, USERS, seed::TASKS_PER_USER, 0).await?;
    seed::users(&pool, seed::DEEP_USER, seed::DEEP_USER, &hash).await?;
    seed::tasks(&pool, seed::DEEP_USER, seed::DEEP_USER, seed::DEEP_TASKS, 10_000_000).await?;
    seed::analyze(&pool).await?;
    let auth_channels = channels(auth_service.addr).await?;
    let task_channels = channels(task_service.addr).await?;
    let mut auth = AuthServiceClient::new(auth_channels[0].clone());
    let mut tokens = Vec::new();
    for n in (1..=USERS).chain([seed::DEEP_USER]) {
        let response = auth.login(LoginRequest { email: seed::email(n), password: seed::PASSWORD.into() }).await?;
        tokens.push(response.into_inner().tokens.expect("Login returns tokens").access_token);
    }
    let deep_token = tokens.pop().expect("the deep user's token");
    let clients = Arc::new(Clients {
        tasks: task_channels.iter().cloned().map(TaskServiceClient::new).collect(),
        auth: auth_channels.iter().cloned().map(AuthServiceClient::new).collect(),
        bearer: tokens.iter().map(|t| format!("Bearer {t}").parse().expect("ASCII")).collect(),
        tokens,
    });

    let pgbench_seconds = timing.measure.as_secs();
    let compare = |scenario: &str, result: &LoadResult| -> anyhow::Result<Value> {
        let Some(script) = pgbench::script(scenario, USERS) else { return Ok(json!({})) };
        let tps = pgbench::run(&binaries, &url, &script, CONCURRENCY, pgbench_seconds)?;
        Ok(json!({"pgbench_tps": tps.round(), "ratio": ((result.rps() / tps) * 100.0).round() / 100.0}))
    };

    // list, get, create, update: each against pgbench on the same statement.
    let c = clients.clone();
    let list = load::run(CONCURRENCY, timing, probe.clone(), move |w, i| {
        let (c, user) = (c.clone(), pick(w, i, USERS));
        async move {
            let page =
                c.task(w).list_tasks(c.request(user, ListTasksRequest { page_size: 50, ..Default::default() })).await;
            match page {
                Ok(r) if r.get_ref().tasks.len() == 50 => Ok(()),
                Ok(r) => Err(format!("expected 50 tasks, got {}", r.get_ref().tasks.len())),
                Err(s) => Err(status_text(s)),
            }
        }
    })
    .await;
    println!("{}", line("list", CONCURRENCY, &list, compare("list", &list)?, &services));

    let c = clients.clone();
    let get = load::run(CONCURRENCY, timing, probe.clone(), move |w, i| {
        let (c, user) = (c.clone(), pick(w, i, USERS));
        let id = (user - 1) * seed::TASKS_PER_USER + (i as i64 % seed::TASKS_PER_USER) + 1;
        async move { c.task(w).get_task(c.request(user, GetTaskRequest { id })).await.map(|_| ()).map_err(status_text) }
    })
    .await;
    println!("{}", line("get", CONCURRENCY, &get, compare("get", &get)?, &services));

    let c = clients.clone();
    let create = load::run(CONCURRENCY, timing, probe.clone(), move |w, i| {
        let (c, user) = (c.clone(), pick(w, i, USERS));
        async move {
            let request = CreateTaskRequest { title: "bench task".into(), ..Default::default() };
            c.task(w).create_task(c.request(user, request)).await.map(|_| ()).map_err(status_text)
        }
    })
    .await;
    println!("{}", line("create", CONCURRENCY, &create, compare("create", &create)?, &services));

    let c = clients.clone();
    let update = load::run(CONCURRENCY, timing, probe.clone(), move |w, i| {
        let (c, user) = (c.clone(), pick(w, i, USERS));
        let id = (user - 1) * seed::TASKS_PER_USER + (i as i64 % seed::TASKS_PER_USER) + 1;
        async move {
            let request = UpdateTaskRequest { id, completed: Some(i % 2 == 0), ..Default::default() };
            c.task(w).update_task(c.request(user, request)).await.map(|_| ()).map_err(status_text)
        }
    })
    .await;
    println!("{}", line("update", CONCURRENCY, &update, compare("update", &update)?, &services));

    // mixed: 70% list, 15% create, 10% update, 5% delete (of a task the same worker created).
    let c = clients.clone();
    let created: Arc<Vec<CreatedTasks>> =
        Arc::new((0..CONCURRENCY).map(|_| std::sync::Mutex::new(Vec::new())).collect());
    let mixed = load::run(CONCURRENCY, timing, probe.clone(), move |w, i| {
        let (c, created, user) = (c.clone(), created.clone(), pick(w, i, USERS));
        async move {
            let roll = (i.wrapping_mul(7919) + w as u64) % 100;
            let mut tasks = c.task(w);
            if roll < 70 {
                tasks
                    .list_tasks(c.request(user, ListTasksRequest { page_size: 50, ..Default::default() }))
                    .await
                    .map(|_| ())
            } else if roll < 85 {
                let request = CreateTaskRequest { title: "mixed".into(), ..Default::default() };
                let task = tasks.create_task(c.request(user, request)).await.map_err(status_text)?.into_inner().task;
                created[w].lock().expect("no panics while held").push((user, task.map(|t| t.id).unwrap_or_default()));
                Ok(())
            } else if roll < 95 {
                let id = (user - 1) * seed::TASKS_PER_USER + (i as i64 % seed::TASKS_PER_USER) + 1;
                let request = UpdateTaskRequest { id, title: Some(format!("mixed {i}")), ..Default::default() };
                tasks.update_task(c.request(user, request)).await.map(|_| ())
            } else {
                let victim = created[w].lock().expect("no panics while held").pop();
                match victim {
                    Some((owner, id)) => tasks
                        .delete_task(c.request(owner, DeleteTaskRequest { id, etag: String::new() }))
                        .await
                        .map(|_| ()),
                    None => tasks.list_tasks(c.request(user, ListTasksRequest::default())).await.map(|_| ()),
                }
            }
            .map_err(status_text)
        }
    })
    .await;
    println!(
        "{}",
        line(
            "mixed",
            CONCURRENCY,
            &mixed,
            json!({"fastapi_peer_rps": 1000, "x_fastapi": (mixed.rps() / 1000.0 * 10.0).round() / 10.0}),
            &services
        )
    );

    // watch: commit-to-event latency for 50 streams while 200 changes a second are made.
    let watched = watch::latency(clients.task(0), &clients.bearer[..50], 200, timing.measure).await?;
    println!("{watched}");

    // validate: ValidateToken at auth-service (signature, then the session in the database).
    let c = clients.clone();
    let validate = load::run(CONCURRENCY, timing, probe.clone(), move |w, i| {
        let (c, user) = (c.clone(), pick(w, i, USERS));
        async move {
            let request = ValidateTokenRequest { access_token: c.tokens[(user - 1) as usize].clone() };
            c.auth(w).validate_token(request).await.map(|_| ()).map_err(status_text)
        }
    })
    .await;
    println!("{}", line("validate", CONCURRENCY, &validate, json!({}), &services));

    // login at the configured cost, and GetCurrentUser latency during that storm.
    let login_concurrency = 8;
    let c = clients.clone();
    let storm = tokio::spawn(load::run(login_concurrency, timing, probe.clone(), move |w, i| {
        let (c, user) = (c.clone(), pick(w, i, USERS));
        async move {
            let request = LoginRequest { email: seed::email(user), password: seed::PASSWORD.into() };
            c.auth(w).login(request).await.map(|_| ()).map_err(status_text)
        }
    }));
    let c = clients.clone();
    let cheap = load::run(4, timing, probe.clone(), move |w, i| {
        let (c, user) = (c.clone(), pick(w, i, USERS));
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            c.auth(w).get_current_user(c.request(user, GetCurrentUserRequest {})).await.map(|_| ()).map_err(status_text)
        }
    })
    .await;
    let storm = storm.await?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let one_verify = {
        let hash = hash.clone();
        tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            for _ in 0..3 {
                let _ = bcrypt::verify(seed::PASSWORD, &hash);
            }
            start.elapsed().as_secs_f64() / 3.0
        })
        .await?
    };
    let ceiling = cores as f64 / one_verify;
    println!(
        "{}",
        line(
            "login",
            login_concurrency,
            &storm,
            json!({"bcrypt_cost": 12, "bcrypt_verify_ms": (one_verify * 1000.0).round(), "ceiling_rps": (ceiling * 10.0).round() / 10.0,
                   "of_ceiling": (storm.rps() / ceiling * 100.0).round() / 100.0,
                   "get_current_user_during_storm": {"p50_ms": cheap.percentile_ms(0.5), "p99_ms": cheap.percentile_ms(0.99), "errors": cheap.errors}}),
            &services
        )
    );

    // deep-page: page 1 vs page 200 (page_size 100) of a user with 20,000 tasks.
    let mut task_client = TaskServiceClient::new(task_channels[0].clone());
    let deep_bearer: MetadataValue<_> = format!("Bearer {deep_token}").parse()?;
    let mut page_token = String::new();
    for _ in 1..200 {
        let mut request = tonic::Request::new(ListTasksRequest {
            page_size: 100,
            page_token: page_token.clone(),
            ..Default::default()
        });
        request.metadata_mut().insert("authorization", deep_bearer.clone());
        page_token = task_client.list_tasks(request).await?.into_inner().next_page_token;
    }
    let mut pages = Vec::new();
    for token in [String::new(), page_token] {
        let (c, bearer) = (clients.clone(), deep_bearer.clone());
        let result = load::run(CONCURRENCY, timing, probe.clone(), move |w, _| {
            let (c, bearer, token) = (c.clone(), bearer.clone(), token.clone());
            async move {
                let mut request =
                    tonic::Request::new(ListTasksRequest { page_size: 100, page_token: token, ..Default::default() });
                request.metadata_mut().insert("authorization", bearer);
                match c.task(w).list_tasks(request).await {
                    Ok(r) if r.get_ref().tasks.len() == 100 => Ok(()),
                    Ok(r) => Err(format!("expected 100 tasks, got {}", r.get_ref().tasks.len())),
                    Err(s) => Err(status_text(s)),
                }
            }
        })
        .await;
        pages.push(result);
    }
    let p99_ratio = pages[1].percentile_ms(0.99) / pages[0].percentile_ms(0.99);
    println!(
        "{}",
        line(
            "deep-page",
            CONCURRENCY,
            &pages[1],
            json!({"page": 200, "page_1": {"rps": pages[0].rps().round(), "p50_ms": pages[0].percentile_ms(0.5), "p99_ms": pages[0].percentile_ms(0.99)},
                   "p99_vs_page_1": (p99_ratio * 100.0).round() / 100.0}),
            &services
        )
    );

    // scale: 100,000 users and 1,000,000 tasks, then list again for the same users.
    seed::users(&pool, USERS + 1, 100_000, &hash).await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&pool).await?;
    // Rounded up: at least a million tasks in all.
    let per_user = ((1_000_000 - existing).max(0) + 100_000 - USERS - 1) / (100_000 - USERS);
    seed::tasks(&pool, USERS + 1, 100_000, per_user, 20_000_000).await?;
    seed::analyze(&pool).await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&pool).await?;
    let c = clients.clone();
    let scale = load::run(CONCURRENCY, timing, probe.clone(), move |w, i| {
        let (c, user) = (c.clone(), pick(w, i, USERS));
        async move {
            c.task(w)
                .list_tasks(c.request(user, ListTasksRequest { page_size: 50, ..Default::default() }))
                .await
                .map(|_| ())
                .map_err(status_text)
        }
    })
    .await;
    let vs_small = scale.percentile_ms(0.99) / list.percentile_ms(0.99);
    println!(
        "{}",
        line(
            "scale",
            CONCURRENCY,
            &scale,
            json!({"users": 100_000, "tasks": total, "p99_vs_small": (vs_small * 100.0).round() / 100.0}),
            &services
        )
    );

    drop(clients);
    drop(task_service);
    drop(auth_service);
    pool.close().await;
    drop(pg);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("all") {
        eprintln!("usage: cargo run --release -p bench -- all [--quick] [--pgbouncer]");
        return std::process::ExitCode::from(2);
    }
    let options =
        Options { quick: args.iter().any(|a| a == "--quick"), pgbouncer: args.iter().any(|a| a == "--pgbouncer") };
    match run_all(options).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
