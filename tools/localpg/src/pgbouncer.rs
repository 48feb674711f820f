//! A PgBouncer (Debian's, 1.18) in front of the private server, the way managed PostgreSQL
//! offers a pooled endpoint. In transaction mode each transaction, or each statement outside
//! one, may run on a different server connection, so session state (prepared statements,
//! LISTEN, session advisory locks) does not survive between them; see tools/faults/tests/pgbouncer.rs
//! for what that does to sqlx. `TEST_VIA_PGBOUNCER=transaction` (or `session`) runs the test
//! suites through one. `server_login_retry = 1`: after PostgreSQL comes back the pooler tries it
//! again within a second (its default waits 15 s).

use crate::PrivatePostgres;
use crate::server::{command, free_port};
use crate::system_tool::PGBOUNCER;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running pgbouncer; stopped when dropped.
pub struct PgBouncer {
    child: Child,
    port: u16,
    password: String,
    dir: PathBuf,
}

impl PgBouncer {
    /// Starts pgbouncer in front of `server` with `pool_mode` ("session" or "transaction"), for
    /// every database on it, as the server's superuser with its password. Blocks until it
    /// accepts connections. Tests call `system_tool::PGBOUNCER.require()` first, so that a
    /// machine without pgbouncer skips them; this errs, naming the package, when it is missing.
    pub fn start(server: &PrivatePostgres, dir: &Path, pool_mode: &str) -> Result<Self, String> {
        let program = PGBOUNCER.find()?;
        let owner = server.owner();
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let chown = |path: &Path| -> Result<(), String> {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
            }
            Ok(())
        };
        chown(dir)?;
        let port = free_port()?;
        let password = server.password().to_string();
        // The plain password lets pgbouncer answer SCRAM on both sides.
        let userlist = dir.join("userlist.txt");
        fs::write(&userlist, format!("\"postgres\" \"{password}\"\n")).map_err(|e| e.to_string())?;
        chown(&userlist)?;
        let ini = dir.join("pgbouncer.ini");
        let config = format!(
            "[databases]\n\
             * = host=127.0.0.1 port={upstream}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = scram-sha-256\n\
             auth_file = {userlist}\n\
             pool_mode = {pool_mode}\n\
             max_client_conn = 2000\n\
             default_pool_size = 20\n\
             max_db_connections = 40\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             server_login_retry = 1\n\
             logfile = {log}\n",
            upstream = server.port(),
            userlist = userlist.display(),
            log = dir.join("pgbouncer.log").display(),
        );
        fs::write(&ini, config).map_err(|e| e.to_string())?;
        chown(&ini)?;
        // A shell holds a pipe from us and stops pgbouncer when it closes: when we drop this, or
        // when our process ends however it ends (test statics are never dropped).
        let script = r#""$1" "$2" & pid=$!; cat >/dev/null; kill $pid; wait $pid"#;
        let child = command(Path::new("/bin/sh"), owner, dir)
            .args(["-c", script, "guardian"])
            .arg(&program)
            .arg(&ini)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("pgbouncer could not start: {e}"))?;
        let bouncer = PgBouncer { child, port, password, dir: dir.to_path_buf() };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!("pgbouncer did not listen on {port}; see {}", bouncer.log_file().display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(bouncer)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` through the pooler.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/{database}", self.password, self.port)
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("pgbouncer.log")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
