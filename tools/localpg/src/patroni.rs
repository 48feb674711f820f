//! A highly available PostgreSQL on this machine, for the failover drill
//! (tools/faults/tests/failover.rs): a primary and a synchronous hot standby (streaming
//! replication), each managed by Patroni (Debian's 3.0.2) with one etcd (3.4, v3 API) as its
//! consensus store, and HAProxy in front, sending connections to whichever node Patroni's REST
//! API says is the primary (`/primary` answers 200 there only). Clients take one host, so they
//! connect to HAProxy.
//!
//! Everything listens on loopback, on ports that were free, with its files under one folder.
//! PostgreSQL refuses to run as root, so when we are root every process here runs as the
//! unprivileged `postgres` user, like [`crate::PrivatePostgres`]. Each process is started by a
//! guardian shell that holds a pipe from us: when the pipe closes (dropping the cluster, a panic
//! unwinding, or our process dying however it dies) the guardian stops its process (SIGTERM, then
//! SIGKILL after 10 s) and, for a Patroni node, then stops its PostgreSQL too (`pg_ctl -m
//! immediate`: a PostgreSQL outliving a killed Patroni would keep its port).
//!
//! The Patroni settings make a failover fast and lose nothing acknowledged:
//! - `synchronous_mode: true`: a commit returns only once the standby has flushed it
//!   (`synchronous_commit: on`), and Patroni promotes only that synchronous standby. Not
//!   `synchronous_mode_strict`, which would block every write once the old primary is gone and
//!   no standby is left to confirm it.
//! - `primary_start_timeout: 0`: when the primary's PostgreSQL crashes, its Patroni releases the
//!   leader key at once (the standby is there to take over) instead of restarting it in place.
//! - `loop_wait: 1`, `retry_timeout: 5`, `ttl: 20`: Patroni notices within a second; the leader
//!   key outlives a missed loop (`ttl` >= `loop_wait` + 2 x `retry_timeout`, as Patroni asks).

use crate::server::{chown, command, free_port, write_private};
use crate::system_tool::{ETCD, HAPROXY, PATRONI};
use crate::{PgBinaries, find_binaries};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long the cluster may take to come up (etcd, the primary's initdb, the standby's base
/// backup, the standby becoming synchronous).
const START_LIMIT: Duration = Duration::from_secs(90);
/// The Patroni scope (the cluster's name in etcd).
const SCOPE: &str = "todo-failover";
const SUPERUSER: &str = "postgres";
const REPLICATION_USER: &str = "replicator";

/// A program started by a guardian shell; stopped when dropped.
struct Guarded {
    guardian: Child,
}

impl Guarded {
    /// Starts `program args` as `owner`, in `dir`, with its output in `log`. With `pg_data`, the
    /// guardian also stops that PostgreSQL (immediate mode) after the program has exited.
    fn start(
        program: &Path,
        args: &[&str],
        owner: Option<(u32, u32)>,
        dir: &Path,
        log: &Path,
        pg_data: Option<(&Path, &Path)>,
    ) -> Result<Self, String> {
        let script = r#"
            "$@" >"$GUARDED_LOG" 2>&1 & pid=$!
            cat >/dev/null
            kill -TERM $pid 2>/dev/null
            n=0
            while kill -0 $pid 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
            kill -KILL $pid 2>/dev/null
            wait $pid
            if [ -n "$GUARDED_PG_CTL" ]; then
                "$GUARDED_PG_CTL" -D "$GUARDED_PG_DATA" stop -m immediate -w -t 10 >/dev/null 2>&1
            fi
        "#;
        let mut cmd = command(Path::new("/bin/sh"), owner, dir);
        cmd.args(["-c", script, "guardian"])
            .arg(program)
            .args(args)
            .env("GUARDED_LOG", log)
            // A PostgreSQL of this machine's own (Debian's pg_wrapper) must not be picked up.
            .env_remove("PGHOST")
            .env_remove("PGUSER")
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env("HOME", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PATRONI") {
                cmd.env_remove(name);
            }
        }
        if let Some((pg_ctl, data)) = pg_data {
            cmd.env("GUARDED_PG_CTL", pg_ctl).env("GUARDED_PG_DATA", data);
        }
        let guardian = cmd.spawn().map_err(|e| format!("{} could not start: {e}", program.display()))?;
        Ok(Guarded { guardian })
    }

    /// Asks the guardian to stop its program (without waiting).
    fn signal_stop(&mut self) {
        drop(self.guardian.stdin.take());
    }

    /// Stops the program and waits for the guardian (at most about 20 s: its own bounds).
    fn stop(&mut self) {
        self.signal_stop();
        let _ = self.guardian.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One PostgreSQL and the Patroni that manages it.
struct Node {
    name: String,
    pg_port: u16,
    rest_port: u16,
    data: PathBuf,
    dir: PathBuf,
    patroni: Option<Guarded>,
}

/// The cluster: etcd, two Patroni nodes and HAProxy; every process stopped and the folder
/// removed when dropped.
pub struct PatroniCluster {
    root: PathBuf,
    owner: Option<(u32, u32)>,
    password: String,
    nodes: Vec<Node>,
    etcd: Option<Guarded>,
    haproxy: Option<Guarded>,
    haproxy_port: u16,
}

impl PatroniCluster {
    /// Starts etcd, the first node (which bootstraps and becomes the primary), the second (a base
    /// backup of the first, streaming from it), waits until the second is the synchronous
    /// standby, then starts HAProxy. Under `root` (created; removed when dropped). Tests call
    /// `require()` on `system_tool::{PATRONI, ETCD, HAPROXY}` first; this errs, naming the
    /// package, when one is missing.
    pub fn start(root: &Path) -> Result<Self, String> {
        let patroni = PATRONI.find()?;
        let etcd = ETCD.find()?;
        let haproxy = HAPROXY.find()?;
        // Patroni's etcd3 client is python3-etcd's: the package pulls it in, but say so plainly.
        // Asked of the Python Patroni runs on (its #! line), not whichever python3 is on PATH.
        let interpreter = fs::read_to_string(&patroni)
            .ok()
            .and_then(|script| script.lines().next()?.strip_prefix("#!").map(|l| l.trim().to_string()))
            .filter(|line| !line.contains(' '))
            .unwrap_or_else(|| "python3".into());
        let python_etcd = std::process::Command::new(interpreter)
            .args(["-c", "import etcd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !python_etcd.is_ok_and(|s| s.success()) {
            return Err("Patroni needs python3-etcd: install it with `apt-get install -y python3-etcd`".into());
        }
        let binaries = find_binaries()?;
        let bin_dir = bin_dir(&binaries)?;
        let owner = crate::server::unprivileged_owner()?;
        fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let root = root.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", root.display()))?;
        // Private: the configuration files hold the passwords.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        chown(&root, owner)?;
        let mut cluster = PatroniCluster {
            root: root.clone(),
            owner,
            password: crate::server::random_password(),
            nodes: Vec::new(),
            etcd: None,
            haproxy: None,
            haproxy_port: 0,
        };
        let replication_password = crate::server::random_password();

        // etcd, one member.
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let etcd_dir = root.join("etcd");
        make_dir(&etcd_dir, owner)?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args = [
            "--name".to_string(),
            "etcd0".into(),
            "--data-dir".into(),
            etcd_dir.join("data").display().to_string(),
            "--listen-client-urls".into(),
            client_url.clone(),
            "--advertise-client-urls".into(),
            client_url,
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url.clone(),
            "--initial-cluster".into(),
            format!("etcd0={peer_url}"),
            "--initial-cluster-state".into(),
            "new".into(),
        ];
        let etcd_args: Vec<&str> = etcd_args.iter().map(String::as_str).collect();
        cluster.etcd = Some(Guarded::start(&etcd, &etcd_args, owner, &etcd_dir, &etcd_dir.join("etcd.log"), None)?);
        wait_until("etcd to answer /health", Duration::from_secs(20), || {
            http_status(client_port, "/health") == Some(200)
        })
        .map_err(|e| cluster.with_log(e, &etcd_dir.join("etcd.log")))?;

        // The two nodes, one after the other: the first bootstraps, the second copies it.
        for i in 0..2 {
            let name = format!("node{i}");
            let dir = root.join(&name);
            make_dir(&dir, owner)?;
            let node = Node {
                data: dir.join("data"),
                pg_port: free_port()?,
                rest_port: free_port()?,
                name,
                dir,
                patroni: None,
            };
            let config = patroni_config(&node, client_port, &bin_dir, &cluster.password, &replication_password);
            let config_file = node.dir.join("patroni.yml");
            write_private(&config_file, &config, owner)?;
            cluster.nodes.push(node);
            let node = cluster.nodes.last_mut().expect("just pushed");
            let config_arg = config_file.display().to_string();
            node.patroni = Some(Guarded::start(
                &patroni,
                &[&config_arg],
                owner,
                &node.dir,
                &node.dir.join("patroni.log"),
                Some((&bin_dir.join("pg_ctl"), &node.data)),
            )?);
            let (rest_port, log) = (node.rest_port, node.dir.join("patroni.log"));
            let (what, path) = if i == 0 {
                ("the first node to become the primary", "/primary")
            } else {
                ("the second node to become the synchronous standby", "/sync")
            };
            wait_until(what, START_LIMIT, || http_status(rest_port, path) == Some(200))
                .map_err(|e| cluster.with_log(e, &log))?;
        }

        // HAProxy: a TCP proxy to the node whose Patroni answers /primary with 200, checked every
        // 200 ms; a node marked down has its connections cut (on-marked-down shutdown-sessions),
        // so no client keeps talking to a former primary.
        cluster.haproxy_port = free_port()?;
        let haproxy_dir = root.join("haproxy");
        make_dir(&haproxy_dir, owner)?;
        let mut config = format!(
            "global\n\
             \x20   maxconn 2000\n\
             \x20   stats socket {socket} mode 600 level user\n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   timeout connect 1s\n\
             \x20   timeout client 30m\n\
             \x20   timeout server 30m\n\
             \x20   timeout check 1s\n\
             listen primary\n\
             \x20   bind 127.0.0.1:{port}\n\
             \x20   option httpchk OPTIONS /primary\n\
             \x20   http-check expect status 200\n\
             \x20   default-server inter 200ms fastinter 200ms downinter 200ms fall 2 rise 1 on-marked-down shutdown-sessions\n",
            port = cluster.haproxy_port,
            socket = haproxy_dir.join("stats.sock").display(),
        );
        for node in &cluster.nodes {
            config.push_str(&format!(
                "    server {} 127.0.0.1:{} check port {}\n",
                node.name, node.pg_port, node.rest_port
            ));
        }
        let haproxy_config = haproxy_dir.join("haproxy.cfg");
        write_private(&haproxy_config, &config, owner)?;
        let config_arg = haproxy_config.display().to_string();
        let haproxy_log = haproxy_dir.join("haproxy.log");
        cluster.haproxy =
            Some(Guarded::start(&haproxy, &["-db", "-f", &config_arg], owner, &haproxy_dir, &haproxy_log, None)?);
        let port = cluster.haproxy_port;
        wait_until("HAProxy to listen", Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).is_ok())
            .map_err(|e| cluster.with_log(e, &haproxy_log))?;
        // HAProxy 2.6 takes a server for UP until its first checks fail: until it has marked the
        // standby DOWN, a connection could land there (read-only).
        let socket = haproxy_dir.join("stats.sock");
        wait_until("HAProxy to mark the primary UP and the standby DOWN", Duration::from_secs(10), || {
            haproxy_states(&socket) == vec![("node0".to_string(), "UP".to_string()), ("node1".into(), "DOWN".into())]
        })
        .map_err(|e| cluster.with_log(e, &haproxy_log))?;
        Ok(cluster)
    }

    /// A URL for `database` as the superuser, through HAProxy: whichever node is the primary.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}", self.password, self.haproxy_port)
    }

    /// A URL for `database` as the superuser, straight to node `node` (0 or 1).
    pub fn node_url(&self, node: usize, database: &str) -> String {
        format!("postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}", self.password, self.nodes[node].pg_port)
    }

    /// The nodes' names, in order (`node0`, `node1`): the names in pg_stat_replication's
    /// `application_name` and in Patroni's synchronous_standby_names.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The node whose Patroni says it is the primary now (REST `/primary` answers 200), if any.
    pub fn primary(&self) -> Option<usize> {
        self.nodes.iter().position(|n| http_status(n.rest_port, "/primary") == Some(200))
    }

    /// The node whose Patroni says it is the synchronous standby now (REST `/sync`), if any.
    pub fn sync_standby(&self) -> Option<usize> {
        self.nodes.iter().position(|n| http_status(n.rest_port, "/sync") == Some(200))
    }

    /// The process id of node `node`'s postmaster (from postmaster.pid), if it is running.
    pub fn postmaster_pid(&self, node: usize) -> Option<u32> {
        let pid_file = fs::read_to_string(self.nodes[node].data.join("postmaster.pid")).ok()?;
        let pid: u32 = pid_file.lines().next()?.trim().parse().ok()?;
        fs::metadata(format!("/proc/{pid}")).is_ok().then_some(pid)
    }

    /// SIGKILL to node `node`'s postmaster, as in a crash: no shutdown checkpoint, its backends
    /// left to notice and exit. Returns the pid it killed.
    pub fn kill_postmaster(&self, node: usize) -> Result<u32, String> {
        let pid =
            self.postmaster_pid(node).ok_or_else(|| format!("{} has no running postmaster", self.nodes[node].name))?;
        // SAFETY: kill has no memory preconditions; the pid was read from the postmaster.pid
        // file of a server of ours and checked in /proc a moment ago.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } != 0 {
            return Err(format!("kill -9 {pid}: {}", std::io::Error::last_os_error()));
        }
        Ok(pid)
    }

    /// The folder of node `node` (its `patroni.log` is there), for a failing test to point at.
    pub fn node_dir(&self, node: usize) -> &Path {
        &self.nodes[node].dir
    }

    /// The end of each log of the cluster (Patroni, etcd, HAProxy), for a failing test to print.
    /// They hold no password: the configuration files do, and are not included.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        let mut logs: Vec<PathBuf> = self.nodes.iter().map(|n| n.dir.join("patroni.log")).collect();
        logs.push(self.root.join("haproxy").join("haproxy.log"));
        for log in logs {
            out.push_str(&format!("--- {}\n{}\n", log.display(), tail(&log, 40)));
        }
        out
    }

    /// `error` followed by the end of `log`.
    fn with_log(&self, error: String, log: &Path) -> String {
        format!("{error}\n--- {}\n{}", log.display(), tail(log, 40))
    }

    /// The user the processes run as (None: ourselves).
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // HAProxy and both Patronis at once (each stops its PostgreSQL), then etcd, which the
        // Patronis talk to while they stop.
        if let Some(h) = self.haproxy.as_mut() {
            h.signal_stop();
        }
        for node in &mut self.nodes {
            if let Some(p) = node.patroni.as_mut() {
                p.signal_stop();
            }
        }
        drop(self.haproxy.take());
        for node in &mut self.nodes {
            drop(node.patroni.take());
        }
        drop(self.etcd.take());
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Patroni's configuration for `node` (YAML; JSON strings where a value needs quoting).
fn patroni_config(node: &Node, etcd_port: u16, bin_dir: &Path, password: &str, replication_password: &str) -> String {
    format!(
        r#"scope: {SCOPE}
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    synchronous_mode: true
    synchronous_mode_strict: false
    primary_start_timeout: 0
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        synchronous_commit: "on"
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 5
        max_replication_slots: 5
        max_connections: 200
  initdb:
    - encoding: UTF8
    - no-locale
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: "{data}"
  bin_dir: "{bin}"
  pgpass: "{pgpass}"
  authentication:
    superuser:
      username: {SUPERUSER}
      password: "{password}"
    replication:
      username: {REPLICATION_USER}
      password: "{replication_password}"
  parameters:
    unix_socket_directories: "{dir}"
  pg_hba:
    - host all all 127.0.0.1/32 scram-sha-256
    - host replication {REPLICATION_USER} 127.0.0.1/32 scram-sha-256
"#,
        name = node.name,
        rest = node.rest_port,
        pg = node.pg_port,
        data = node.data.display(),
        bin = bin_dir.display(),
        pgpass = node.dir.join("pgpass").display(),
        dir = node.dir.display(),
    )
}

/// The folder holding the real server programs (Patroni runs pg_ctl, initdb, pg_basebackup,
/// pg_rewind from it).
fn bin_dir(binaries: &PgBinaries) -> Result<PathBuf, String> {
    let pg_ctl = binaries.program("pg_ctl");
    let real = pg_ctl.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", pg_ctl.display()))?;
    let dir = real.parent().ok_or("pg_ctl has no folder")?.to_path_buf();
    for program in ["postgres", "pg_basebackup", "pg_rewind", "initdb"] {
        if !dir.join(program).is_file() {
            return Err(format!("{} has no {program}", dir.display()));
        }
    }
    Ok(dir)
}

/// The status code of `GET path` on 127.0.0.1:`port`, or None if it does not answer in 1 s.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    // "HTTP/1.x NNN"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Each server of HAProxy's `primary` proxy and its state (UP, DOWN, ...), from `show stat` on
/// its stats socket; empty when it does not answer.
fn haproxy_states(socket: &Path) -> Vec<(String, String)> {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else { return Vec::new() };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"show stat\n").is_err() {
        return Vec::new();
    }
    let mut csv = String::new();
    let _ = stream.read_to_string(&mut csv);
    // "# pxname,svname,...": the status is the 18th field.
    csv.lines()
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > 17 && f[0] == "primary" && f[1].starts_with("node"))
        .map(|f| (f[1].to_string(), f[17].split(' ').next().unwrap_or_default().to_string()))
        .collect()
}

/// Polls `ready` every 100 ms until it holds; an error naming `what` after `limit`.
fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > limit {
            return Err(format!("waited {limit:?} for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn make_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    chown(dir, owner)
}

/// The last `lines` lines of a log file (empty when it cannot be read).
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
