//! CPU time by process group, from /proc: where a scenario's cycles went (the services, the
//! load generator itself, PostgreSQL), to tell a slow service from a saturated machine.

use std::collections::BTreeMap;

/// Clock ticks per second for /proc's utime and stime (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of one process, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is parenthesised and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

fn command_name(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// CPU seconds used so far by: each service (by pid), this process, and all postgres processes.
pub fn snapshot(services: &[(&'static str, u32)]) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    for (name, pid) in services {
        out.insert(*name, cpu_seconds(&pid.to_string()).unwrap_or(0.0));
    }
    out.insert("bench", cpu_seconds("self").unwrap_or(0.0));
    let postgres: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()))
        .filter(|pid| command_name(pid).is_some_and(|c| c.starts_with("postgres") || c == "pgbench"))
        .filter_map(|pid| cpu_seconds(&pid))
        .sum();
    out.insert("postgres", postgres);
    out
}

/// Milliseconds of CPU per request between two snapshots, by process group.
pub fn per_request(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
    requests: u64,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (name, end) in after {
        let used = end - before.get(name).copied().unwrap_or(0.0);
        let per = used * 1000.0 / requests.max(1) as f64;
        out.insert((*name).into(), serde_json::json!((per * 1000.0).round() / 1000.0));
    }
    serde_json::Value::Object(out)
}
