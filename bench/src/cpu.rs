//! CPU time by process group, from /proc: where a scenario's cycles went (the services, the
//! load generator itself, PostgreSQL), to tell a slow service from a saturated machine.

use std::collections::BTreeMap;

/// Clock ticks per second for /proc's utime and stime (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of /proc/<pid>/stat after the command name, which is parenthesised and may
/// contain spaces: index 0 is the state, 11 utime, 12 stime, 13 cutime, 14 cstime.
fn stat_fields(pid: &str) -> Option<Vec<f64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(|f| f.parse().unwrap_or(0.0)).collect())
}

/// utime + stime of one process, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let fields = stat_fields(pid)?;
    Some((fields.get(11)? + fields.get(12)?) / TICKS_PER_SECOND)
}

/// CPU seconds of one PostgreSQL server: the postmaster, its live children (backends, background
/// workers) and, through the postmaster's cutime and cstime, every child it has reaped, so the
/// backends of a pgbench run that has ended still count. Other PostgreSQL servers on the
/// machine (other test runs) do not.
pub fn postgres_seconds(postmaster: u32) -> f64 {
    let Some(own) = stat_fields(&postmaster.to_string()) else { return 0.0 };
    let reaped_and_own: f64 = own.get(11..15).map(|f| f.iter().sum()).unwrap_or(0.0) / TICKS_PER_SECOND;
    let children =
        std::fs::read_to_string(format!("/proc/{postmaster}/task/{postmaster}/children")).unwrap_or_default();
    let live: f64 = children.split_whitespace().filter_map(cpu_seconds).sum();
    reaped_and_own + live
}

/// CPU seconds used so far by: each service (by pid), this process (`bench`), and the bench's
/// PostgreSQL server (`postgres`, see [`postgres_seconds`]).
pub fn snapshot(services: &[(&'static str, u32)], postmaster: u32) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    for (name, pid) in services {
        out.insert(*name, cpu_seconds(&pid.to_string()).unwrap_or(0.0));
    }
    out.insert("bench", cpu_seconds("self").unwrap_or(0.0));
    out.insert("postgres", postgres_seconds(postmaster));
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
        out.insert((*name).into(), serde_json::json!(round3(per)));
    }
    serde_json::Value::Object(out)
}

/// Rounded to three decimals, as every CPU figure is printed.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
