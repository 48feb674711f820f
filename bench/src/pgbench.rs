//! pgbench on the exact statements the services issue, at the same concurrency: the honest
//! upper bound for an authenticated gRPC front on PostgreSQL.

use crate::seed::{TASKS_PER_USER, user_id_sql};
use anyhow::{Context, bail};
use localpg::PgBinaries;
use std::process::Command;

const COLUMNS: &str =
    "id, user_id, title, description, completed, created_at, updated_at, xmin::text::bigint AS version";

/// The script of a scenario, if pgbench has an equivalent.
pub fn script(scenario: &str, users: i64) -> Option<String> {
    let user = user_id_sql(":n");
    let pick = format!("\\set n random(1, {users})\n\\set t random(1, {TASKS_PER_USER})\n");
    let id = format!("(CAST(:n AS bigint) - 1) * {TASKS_PER_USER} + CAST(:t AS bigint)");
    let sql = match scenario {
        "list" => {
            format!("SELECT {COLUMNS} FROM tasks WHERE user_id = {user} ORDER BY created_at DESC, id DESC LIMIT 51;")
        }
        "get" => format!("SELECT {COLUMNS} FROM tasks WHERE id = {id} AND user_id = {user};"),
        "create" => format!(
            "INSERT INTO tasks (user_id, title, description) VALUES ({user}, 'bench task', NULL) RETURNING {COLUMNS};"
        ),
        "update" => format!(
            "UPDATE tasks SET title = COALESCE(NULL, title), description = CASE WHEN false THEN NULL ELSE description END, \
             completed = COALESCE((CAST(:t AS bigint) % 2 = 0), completed) \
             WHERE id = {id} AND user_id = {user} AND (NULL::bigint IS NULL OR xmin::text::bigint = NULL) RETURNING {COLUMNS};"
        ),
        _ => return None,
    };
    Some(format!("{pick}{sql}\n"))
}

/// Runs pgbench (prepared statements, like sqlx) and returns its transactions per second.
pub fn run(binaries: &PgBinaries, url: &str, script: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let dir = std::env::temp_dir().join(format!("todo-pgbench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("script.sql");
    std::fs::write(&file, script)?;
    let output = Command::new(binaries.program("pgbench"))
        .args(["-n", "-M", "prepared", "-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&file)
        .arg(url)
        .output()
        .context("running pgbench")?;
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("pgbench failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .context("pgbench printed no tps")
}
