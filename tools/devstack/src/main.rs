//! `cargo run -p devstack`: everything a developer needs, in one process.
//!
//! Uses DATABASE_URL when set; otherwise starts a private PostgreSQL from the machine's own
//! binaries with its data in `.data/postgres` (git ignores it, and a second start keeps the
//! data). Applies the migrations, serves auth-service and task-service on their default ports
//! (AUTH_ADDR, TASK_ADDR), prints how to call them, and on Ctrl-C stops the services (letting
//! in-flight calls finish) and then the PostgreSQL it started.

use anyhow::Context;
use localpg::{Durability, PrivatePostgres, find_binaries};
use sqlx::{Connection, Executor};
use std::path::PathBuf;
use std::process::ExitCode;
use todo_shared::env::{Env, ProcessEnv};

/// The process environment with DATABASE_URL pointing at the database we chose.
struct DevEnv {
    database_url: String,
}

impl Env for DevEnv {
    fn get(&self, var: &str) -> Option<String> {
        if var == "DATABASE_URL" { Some(self.database_url.clone()) } else { ProcessEnv.get(var) }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The private server's superuser connects to create the `todo` database once.
async fn ensure_database(pg: &PrivatePostgres, name: &'static str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        admin.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await?;
    }
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let mut private = None;
    let database_url = match ProcessEnv.get("DATABASE_URL").filter(|v| !v.is_empty()) {
        Some(url) => {
            println!("Using DATABASE_URL.");
            url
        }
        None => {
            let binaries = find_binaries().map_err(anyhow::Error::msg)?;
            // DEVSTACK_DATA_DIR moves the data elsewhere (the devstack test uses a temporary one).
            let root = ProcessEnv
                .get("DEVSTACK_DATA_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join(".data/postgres"));
            println!("Starting a private PostgreSQL from {} (data in {})...", binaries.dir.display(), root.display());
            let pg =
                tokio::task::spawn_blocking(move || PrivatePostgres::start(binaries, &root, Durability::Safe, false))
                    .await?
                    .map_err(anyhow::Error::msg)?;
            ensure_database(&pg, "todo").await.context("creating the todo database")?;
            println!("PostgreSQL is listening on 127.0.0.1:{} (log: {}).", pg.port(), pg.log_file().display());
            let url = pg.url("todo");
            private = Some(pg);
            url
        }
    };

    let env = DevEnv { database_url };
    let auth_config = auth_service::AuthConfig::from_env(&env)?;
    let task_config = task_service::TaskConfig::from_env(&env)?;

    // Once, before either service starts; the services then find nothing to apply.
    let pool = todo_shared::database::pool(&auth_config.db)?;
    todo_shared::database::migrate(pool.pool()).await.context("applying migrations")?;
    pool.close().await;
    println!("Migrations applied.");

    let auth_listener = tokio::net::TcpListener::bind(auth_config.addr)
        .await
        .with_context(|| format!("cannot listen on {} (set AUTH_ADDR to another address)", auth_config.addr))?;
    let task_listener = tokio::net::TcpListener::bind(task_config.addr)
        .await
        .with_context(|| format!("cannot listen on {} (set TASK_ADDR to another address)", task_config.addr))?;
    let (auth_addr, task_addr) = (auth_config.addr, task_config.addr);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let auth = tokio::spawn(auth_service::serve(auth_listener, auth_config, stopped(stop_rx.clone())));
    let task = tokio::spawn(task_service::serve(task_listener, task_config, stopped(stop_rx)));

    print_usage(auth_addr, task_addr);
    let flatten = |handle: tokio::task::JoinHandle<anyhow::Result<()>>| async move { handle.await? };
    let services = async { tokio::try_join!(flatten(auth), flatten(task)) };
    tokio::pin!(services);
    let outcome = tokio::select! {
        _ = todo_shared::server::serve::shutdown_signal() => {
            println!("\nStopping: letting in-flight calls finish...");
            let _ = stop_tx.send(true);
            services.await.map(|_| ())
        }
        // A service ended without being asked (its error says why).
        result = &mut services => result.map(|_| ()),
    };
    if let Some(mut pg) = private {
        tokio::task::spawn_blocking(move || pg.stop()).await?;
        println!("PostgreSQL stopped.");
    }
    outcome
}

fn print_usage(auth: std::net::SocketAddr, task: std::net::SocketAddr) {
    println!(
        r#"
auth-service on {auth}, task-service on {task}. Reflection is on, so grpcurl needs no .proto:

  grpcurl -plaintext -d '{{"email":"me@example.com","password":"correct horse"}}' {auth} todo.auth.v1.AuthService/SignUp
  TOKEN=$(grpcurl -plaintext -d '{{"email":"me@example.com","password":"correct horse"}}' {auth} todo.auth.v1.AuthService/Login | jq -r .tokens.accessToken)
  grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{{"title":"Buy milk"}}' {task} todo.task.v1.TaskService/CreateTask
  grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{{}}' {task} todo.task.v1.TaskService/ListTasks

Press Ctrl-C to stop everything."#
    );
}

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = todo_shared::server::telemetry::init(&ProcessEnv, "devstack") {
        eprintln!("devstack: configuration error: {e}");
        return ExitCode::from(2);
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devstack: {e:#}");
            ExitCode::FAILURE
        }
    }
}
