//! pgbench on the exact statements the services issue, at the same concurrency: the honest
//! upper bound for an authenticated gRPC front on PostgreSQL.

use crate::seed::{TASKS_PER_USER, user_id_sql};
use anyhow::{Context, bail};
use localpg::PgBinaries;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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

/// What one pgbench run measured.
pub struct PgbenchRun {
    /// Transactions per second over the whole run, as pgbench reports it (`tps = ...`,
    /// connection time excluded).
    pub tps: f64,
    /// Milliseconds of PostgreSQL's CPU (all the bench server's processes, see
    /// `cpu::postgres_seconds`) per transaction, over pgbench's steady seconds: from its first
    /// progress report to its last, so that opening and closing its connections is left out.
    pub pg_cpu_ms_per_tx: f64,
}

/// Runs pgbench (prepared statements, like sqlx) against the server whose postmaster is
/// `postmaster`, with a progress report every second, and measures PostgreSQL's CPU per
/// transaction between the first report and the last.
pub fn run(
    binaries: &PgBinaries,
    url: &str,
    postmaster: u32,
    script: &str,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<PgbenchRun> {
    let dir = std::env::temp_dir().join(format!("todo-pgbench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("script.sql");
    std::fs::write(&file, script)?;
    let mut child = Command::new(binaries.program("pgbench"))
        .args(["-n", "-M", "prepared", "-P", "1", "-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string()])
        .arg("-f")
        .arg(&file)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running pgbench")?;
    // (PostgreSQL CPU seconds when the report was read, transactions in the report's second)
    let mut reports: Vec<(f64, f64)> = Vec::new();
    let mut errors = String::new();
    let stderr = child.stderr.take().expect("stderr is piped");
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        match progress_transactions(&line) {
            Some(transactions) => reports.push((crate::cpu::postgres_seconds(postmaster), transactions)),
            None => errors.push_str(&line),
        }
    }
    let output = child.wait_with_output().context("waiting for pgbench")?;
    let _ = std::fs::remove_dir_all(&dir);
    if !output.status.success() {
        bail!("pgbench failed: {errors}");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .context("pgbench printed no tps")?;
    let pg_cpu_ms_per_tx = match (reports.first(), reports.last()) {
        (Some((cpu_first, _)), Some((cpu_last, _))) if reports.len() >= 2 => {
            // The first report's transactions happened before its CPU reading.
            let transactions: f64 = reports[1..].iter().map(|(_, t)| t).sum();
            (cpu_last - cpu_first) * 1000.0 / transactions.max(1.0)
        }
        _ => bail!("pgbench printed fewer than two progress reports in {seconds} s"),
    };
    Ok(PgbenchRun { tps, pg_cpu_ms_per_tx })
}

/// The transactions of one `-P 1` progress report (`progress: 2.0 s, 20417.9 tps, lat ...`):
/// its tps over its one second.
fn progress_transactions(line: &str) -> Option<f64> {
    let rest = line.strip_prefix("progress: ")?;
    let tps = rest.split(", ").nth(1)?.strip_suffix(" tps")?;
    tps.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_progress_report() {
        let line = "progress: 2.0 s, 20417.9 tps, lat 1.562 ms stddev 0.532, 0 failed";
        assert_eq!(super::progress_transactions(line), Some(20417.9));
        assert_eq!(super::progress_transactions("pgbench (15.18)"), None);
    }
}
