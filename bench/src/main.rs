//! `cargo run --release -p bench -- all [--quick] [--pgbouncer]`: drives the real services over
//! gRPC and prints one JSON object per line per scenario, next to pgbench on the same statements
//! (straight to PostgreSQL) and a bare tonic server with canned replies (the floor). With
//! `--pgbouncer` the services reach PostgreSQL through PgBouncer in transaction mode
//! (`DB_POOL_MODE=transaction`). `bench --help` and `bench all --help` list the fields.
//!
//! Everything is its own: a private PostgreSQL (with pg_stat_statements), both services built in
//! release mode and run as separate processes, data seeded by SQL. See docs/BENCHMARKS.md for
//! what the figures mean.

mod callers;
mod cpu;
mod floor;
mod load;
mod pgbench;
mod pgstat;
mod seed;
mod stack;
mod watch;

use anyhow::Context;
use callers::{CONCURRENCY, Clients, USERS, canned_replies, channels, pick, status_text, task_load};
use clap::{Parser, Subcommand};
use load::{LoadResult, Timing};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{GetCurrentUserRequest, LoginRequest, ValidateTokenRequest};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::*;
use tonic::metadata::MetadataValue;

/// (owner, task id) of the tasks one mixed-scenario worker created, for it to delete later.
type CreatedTasks = std::sync::Mutex<Vec<(i64, i64)>>;

/// Load generator and benchmarks: the real services over gRPC against pgbench running the same
/// SQL, and against a bare tonic server (the floor).
#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Runs every scenario and prints one JSON object a line.
    ///
    /// Scenarios, in order: setup, startup, floor (GetTask, ListTasks, CreateTask), list, get,
    /// create, update, mixed, watch, validate, login, deep-page, scale. There is no option to
    /// run only some of them.
    ///
    /// Fields of a scenario's line, besides requests, errors, rps, p50_ms, p99_ms, rss_mb:
    ///   cpu_ms_per_request    CPU ms per measured call of each process group (the services,
    ///                         bench itself, postgres: the bench's PostgreSQL server only)
    ///   pg_cpu_ms_per_call    PostgreSQL's CPU ms per call (= cpu_ms_per_request.postgres)
    ///   statements_per_call   statements pg_stat_statements counted (SET, BEGIN, COMMIT
    ///                         included) per gRPC call, warm-up included on both sides
    ///   statements            the most frequent statements as [query, per call] pairs
    ///   pgbench_tps, ratio    pgbench on the same statement and rows; ratio = rps / pgbench_tps
    ///   pgbench_pg_cpu_ms_per_tx  PostgreSQL's CPU ms per pgbench transaction (its steady
    ///                         seconds, between its first and last progress report)
    ///   pg_cpu_vs_pgbench     pg_cpu_ms_per_call / pgbench_pg_cpu_ms_per_tx
    ///   service_cpu_vs_floor  task-service CPU per call / the floor's CPU per call of the
    ///                         same RPC (list, get, create)
    /// The floor's lines (scenario "floor", field rpc) give its cpu_ms_per_call and reply_bytes.
    #[command(verbatim_doc_comment)]
    All(Options),
    /// The floor's server process (started by `all`).
    #[command(hide = true)]
    FloorServer {
        /// Where to listen.
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// The folder the canned replies were written to.
        #[arg(long)]
        replies: std::path::PathBuf,
    },
}

#[derive(clap::Args)]
struct Options {
    /// 1 s of warm-up and 4 s measured per scenario (else 3 s and 15 s).
    #[arg(long)]
    quick: bool,
    /// The services reach PostgreSQL through PgBouncer in transaction mode (pgbench does not).
    #[arg(long)]
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

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The fields of several JSON objects in one object (a later one wins a shared name).
fn merge(parts: impl IntoIterator<Item = Value>) -> Value {
    let mut out = serde_json::Map::new();
    for part in parts {
        if let Value::Object(fields) = part {
            out.extend(fields);
        }
    }
    Value::Object(out)
}

/// What PostgreSQL did for a scenario's calls: its CPU per call, and `pgstat::per_call`'s fields.
fn database(result: &LoadResult, statements: Value) -> Value {
    merge([json!({"pg_cpu_ms_per_call": cpu::round3(result.cpu_ms_per_call("postgres"))}), statements])
}

async fn run_all(options: Options) -> anyhow::Result<()> {
    let timing = options.timing();
    let bin_dir = tokio::task::spawn_blocking(stack::build_services).await??;
    let binaries = localpg::find_binaries().map_err(anyhow::Error::msg)?;
    let pg = tokio::task::spawn_blocking(|| stack::start_postgres(&pgstat::server_settings())).await??;
    let postmaster = *pg.processes().first().context("the bench's PostgreSQL has a postmaster")?;
    let url = pg.url("postgres");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await?;
    todo_shared::database::migrate(&pool).await?;
    pgstat::install(&pool).await?;
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
    let probe: load::CpuProbe = Arc::new(move || cpu::snapshot(&pids, postmaster));
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
        let run = pgbench::run(&binaries, &url, postmaster, &script, CONCURRENCY, pgbench_seconds)?;
        Ok(json!({
            "pgbench_tps": run.tps.round(),
            "ratio": round2(result.rps() / run.tps),
            "pgbench_pg_cpu_ms_per_tx": cpu::round3(run.pg_cpu_ms_per_tx),
            "pg_cpu_vs_pgbench": round2(result.cpu_ms_per_call("postgres") / run.pg_cpu_ms_per_tx),
        }))
    };

    // The floor: a bare tonic server giving the real service's replies, under the same load.
    let canned = canned_replies(&clients).await?;
    let replies_dir = std::env::temp_dir().join(format!("todo-bench-floor-{}", uuid::Uuid::new_v4().simple()));
    canned.write(&replies_dir)?;
    let (floor_server, _) = stack::spawn_floor(&replies_dir).await?;
    let floor_pids = [("floor", floor_server.pid())];
    let floor_probe: load::CpuProbe = Arc::new(move || cpu::snapshot(&floor_pids, postmaster));
    let floor_clients = Arc::new(Clients {
        tasks: channels(floor_server.addr).await?.into_iter().map(TaskServiceClient::new).collect(),
        auth: clients.auth.clone(),
        bearer: clients.bearer.clone(),
        tokens: Vec::new(),
    });
    let mut floor = std::collections::BTreeMap::new();
    for ((rpc, scenario), bytes) in [("GetTask", "get"), ("ListTasks", "list"), ("CreateTask", "create")]
        .into_iter()
        .zip([canned.sizes()[0], canned.sizes()[1], canned.sizes()[2]])
    {
        let result = task_load(scenario, floor_clients.clone(), timing, floor_probe.clone()).await;
        let own =
            json!({"rpc": rpc, "reply_bytes": bytes, "cpu_ms_per_call": cpu::round3(result.cpu_ms_per_call("floor"))});
        println!("{}", line("floor", CONCURRENCY, &result, own, &[&floor_server]));
        floor.insert(scenario, result);
    }
    drop(floor_clients);
    drop(floor_server);
    let _ = std::fs::remove_dir_all(&replies_dir);

    // list, get, create, update: each against pgbench on the same statement, and the floor.
    let mut results = std::collections::BTreeMap::new();
    for scenario in ["list", "get", "create", "update"] {
        let (result, statements) =
            pgstat::around(&pool, task_load(scenario, clients.clone(), timing, probe.clone())).await?;
        let vs_floor = floor.get(scenario).map(|f| {
            json!({"service_cpu_vs_floor": round2(result.cpu_ms_per_call("task-service") / f.cpu_ms_per_call("floor"))})
        });
        let extra = merge([compare(scenario, &result)?, database(&result, statements), vs_floor.unwrap_or_default()]);
        println!("{}", line(scenario, CONCURRENCY, &result, extra, &services));
        results.insert(scenario, result);
    }
    let list = results.remove("list").expect("list ran");

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
    });
    let (mixed, statements) = pgstat::around(&pool, mixed).await?;
    println!("{}", line("mixed", CONCURRENCY, &mixed, database(&mixed, statements), &services));

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
    });
    let (validate, statements) = pgstat::around(&pool, validate).await?;
    println!("{}", line("validate", CONCURRENCY, &validate, database(&validate, statements), &services));

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
        });
        pages.push(pgstat::around(&pool, result).await?);
    }
    let (deep, statements) = pages.pop().expect("page 200 ran");
    let (first, _) = pages.pop().expect("page 1 ran");
    let p99_ratio = deep.percentile_ms(0.99) / first.percentile_ms(0.99);
    let own = json!({"page": 200, "page_1": {"rps": first.rps().round(), "p50_ms": first.percentile_ms(0.5), "p99_ms": first.percentile_ms(0.99)},
                     "p99_vs_page_1": round2(p99_ratio)});
    println!("{}", line("deep-page", CONCURRENCY, &deep, merge([own, database(&deep, statements)]), &services));

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
    });
    let (scale, statements) = pgstat::around(&pool, scale).await?;
    let vs_small = scale.percentile_ms(0.99) / list.percentile_ms(0.99);
    let own = json!({"users": 100_000, "tasks": total, "p99_vs_small": round2(vs_small)});
    println!("{}", line("scale", CONCURRENCY, &scale, merge([own, database(&scale, statements)]), &services));

    drop(clients);
    drop(task_service);
    drop(auth_service);
    pool.close().await;
    drop(pg);
    Ok(())
}

/// mimalloc rather than glibc's malloc: less CPU per call (workspace Cargo.toml says how much).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let outcome = match Cli::parse().command {
        BenchCommand::All(options) => run_all(options).await,
        BenchCommand::FloorServer { addr, replies } => floor::serve(addr, &replies).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
