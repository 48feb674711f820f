//! The system tools some tests need beyond Rust and PostgreSQL ([`ALL`]), found or
//! reported missing in one way for every such test.
//!
//! A test that needs one calls [`SystemTool::require`] first. When the tool is missing, the test
//! prints one line naming the tool and the Debian package that brings it, and returns without
//! running, so `cargo test --workspace` passes on a machine with only Rust and PostgreSQL. When
//! `CI` is set (`.ci/run` sets it), a missing tool fails the test instead: CI must run them all.
//! `TEST_HIDE_TOOLS=pgbouncer,...` treats the listed tools as missing, which is how CI proves the
//! skip path without uninstalling anything.

use std::io::Write;
use std::path::PathBuf;

/// A program some tests need, and where to get it.
#[derive(Debug, Clone, Copy)]
pub struct SystemTool {
    /// The program's file name, e.g. `pgbouncer`.
    pub program: &'static str,
    /// The Debian package that installs it (`apt-get install -y <package>`).
    pub package: &'static str,
    /// Folders looked in after `PATH`: where the package puts the program when that is not on
    /// an ordinary user's `PATH` (Debian's pgbouncer is in /usr/sbin).
    pub also_in: &'static [&'static str],
}

/// PgBouncer (Debian's 1.18): the pooler tests in `tools/faults` and `TEST_VIA_PGBOUNCER`.
pub const PGBOUNCER: SystemTool = SystemTool { program: "pgbouncer", package: "pgbouncer", also_in: &["/usr/sbin"] };

/// Patroni (Debian's 3.0.2, with python3-etcd for its etcd client): the failover drill
/// (`tools/faults/tests/failover.rs`).
pub const PATRONI: SystemTool = SystemTool { program: "patroni", package: "patroni", also_in: &[] };

/// etcd (Debian's 3.4, package etcd-server): Patroni's consensus store in the failover drill.
pub const ETCD: SystemTool = SystemTool { program: "etcd", package: "etcd-server", also_in: &[] };

/// HAProxy (Debian's 2.6): the stable address in front of whichever node is the primary, in the
/// failover drill.
pub const HAPROXY: SystemTool = SystemTool { program: "haproxy", package: "haproxy", also_in: &["/usr/sbin"] };

/// pgBackRest (Debian's 2.45): the backup and point-in-time restore drill
/// (`tools/faults/tests/restore.rs`, `crate::pgbackrest`).
pub const PGBACKREST: SystemTool = SystemTool { program: "pgbackrest", package: "pgbackrest", also_in: &["/usr/bin"] };

/// Every tool above: `tools/ci/install-test-tools.sh` installs the same list (keep the two in step).
pub const ALL: &[SystemTool] = &[PGBOUNCER, PATRONI, ETCD, HAPROXY, PGBACKREST];

/// The variable listing tools to treat as missing (comma-separated program names).
pub const HIDE_VARIABLE: &str = "TEST_HIDE_TOOLS";

impl SystemTool {
    /// The program's path: the first match on `PATH`, then in `also_in`. An error naming the
    /// tool and its package when it is not there, or when `TEST_HIDE_TOOLS` lists it.
    pub fn find(&self) -> Result<PathBuf, String> {
        let hidden = std::env::var(HIDE_VARIABLE).unwrap_or_default();
        let found = if hidden.split(',').any(|name| name.trim() == self.program) {
            None
        } else {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain(self.also_in.iter().map(PathBuf::from))
                .map(|dir| dir.join(self.program))
                .find(|candidate| candidate.is_file())
        };
        found.ok_or_else(|| {
            let why = if hidden.is_empty() {
                "not found".to_string()
            } else {
                format!("not found ({HIDE_VARIABLE}={hidden})")
            };
            format!("{} {why}: install it with `apt-get install -y {}`", self.program, self.package)
        })
    }

    /// For a test that needs the tool: its path, or None when it is missing and the test should
    /// return without running. A skip prints one line to the terminal (past the test harness's
    /// output capture, so a passing run still shows it). With `CI` set, a missing tool panics.
    pub fn require(&self) -> Option<PathBuf> {
        match self.find() {
            Ok(path) => Some(path),
            Err(missing) => {
                skip_or_fail(&missing);
                None
            }
        }
    }
}

/// For a test that needs several tools: true when all are there; else false after one line
/// naming every missing one (or a panic with `CI` set), as [`SystemTool::require`] does for one.
pub fn require_all(tools: &[SystemTool]) -> bool {
    let missing: Vec<String> = tools.iter().filter_map(|tool| tool.find().err()).collect();
    if missing.is_empty() {
        return true;
    }
    skip_or_fail(&missing.join("; "));
    false
}

/// Panics with `missing` when CI is set, else prints the skip line.
fn skip_or_fail(missing: &str) {
    if ci() {
        panic!("{missing} (CI is set, so tests that need it must run)");
    }
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    // Straight to stderr: libtest captures print!/eprint!, not writes to the handle.
    // One write, so that libtest's own lines (stdout, often the same file) cannot land
    // inside it.
    let line = format!("skipped {test}: {missing} (with CI set this fails)\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// True when `CI` is set to anything but empty, `0` or `false`.
fn ci() -> bool {
    std::env::var("CI").map(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false")).unwrap_or(false)
}
