//! Creating, starting and stopping the private server.

use crate::binaries::PgBinaries;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Tests trade durability for speed; the dev stack keeps its data safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync on: for `devstack`, whose data is kept between runs.
    Safe,
    /// fsync off: for throwaway test servers, never for data anyone keeps.
    Throwaway,
}

/// A running private server; stopped when dropped, or by the guardian when the process ends.
pub struct PrivatePostgres {
    binaries: PgBinaries,
    root: PathBuf,
    port: u16,
    password: String,
    owner: Option<(u32, u32)>,
    guardian: Option<Child>,
    durability: Durability,
    /// The certificate and key files when TLS is on.
    tls_files: Option<(PathBuf, PathBuf)>,
    /// Extra `-c name=value` settings, given at every start (after ours, so they win).
    settings: Vec<(String, String)>,
}

pub(crate) const SUPERUSER: &str = "postgres";

/// A certificate and key (PEM) for the server to offer TLS with (`ssl=on`); clients may still
/// connect without TLS unless they ask for it (sslmode).
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

impl PrivatePostgres {
    /// Starts a server whose files live under `root` (created if missing; an existing cluster
    /// there is reused, so a second start keeps the data). With `remove_on_exit` the guardian
    /// deletes `root` after stopping the server.
    pub fn start(
        binaries: PgBinaries,
        root: &Path,
        durability: Durability,
        remove_on_exit: bool,
    ) -> Result<Self, String> {
        Self::start_with_tls(binaries, root, durability, remove_on_exit, None)
    }

    /// `start`, with extra server settings (`-c name=value`, after ours, so they override
    /// them), kept for `resume` too: e.g. WAL archiving for a backup (`crate::pgbackrest`).
    pub fn start_with_settings(
        binaries: PgBinaries,
        root: &Path,
        durability: Durability,
        remove_on_exit: bool,
        settings: &[(String, String)],
    ) -> Result<Self, String> {
        Self::start_inner(binaries, root, durability, remove_on_exit, None, settings)
    }

    /// `start_with_settings` on a data folder that is already there, restored from a backup of
    /// another of our servers into `root/data` (`PgBackRest::restore_to_time`): no initdb; the
    /// superuser's password is the one of the server backed up (it is in the restored catalog),
    /// written where `start` keeps it. A restore that still has recovery to do (a target time)
    /// replays it once started; `pg_is_in_recovery()` says when it is done.
    pub fn start_restored(
        binaries: PgBinaries,
        root: &Path,
        superuser_password: &str,
        durability: Durability,
        remove_on_exit: bool,
        settings: &[(String, String)],
    ) -> Result<Self, String> {
        if !root.join("data").join("PG_VERSION").exists() {
            return Err(format!("{} holds no restored data folder", root.join("data").display()));
        }
        write_private(&root.join("superuser.password"), superuser_password, unprivileged_owner()?)?;
        Self::start_with_settings(binaries, root, durability, remove_on_exit, settings)
    }

    /// `start`, with TLS on when `tls` is given.
    pub fn start_with_tls(
        binaries: PgBinaries,
        root: &Path,
        durability: Durability,
        remove_on_exit: bool,
        tls: Option<&ServerTls>,
    ) -> Result<Self, String> {
        Self::start_inner(binaries, root, durability, remove_on_exit, tls, &[])
    }

    fn start_inner(
        binaries: PgBinaries,
        root: &Path,
        durability: Durability,
        remove_on_exit: bool,
        tls: Option<&ServerTls>,
        settings: &[(String, String)],
    ) -> Result<Self, String> {
        let owner = unprivileged_owner()?;
        fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let root = root.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", root.display()))?;
        chown(&root, owner)?;
        let data = root.join("data");
        let password_file = root.join("superuser.password");

        if !data.join("PG_VERSION").exists() {
            let password = random_password();
            write_private(&password_file, &password, owner)?;
            fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
            chown(&data, owner)?;
            run(
                command(&binaries.program("initdb"), owner, &root)
                    .arg("-D")
                    .arg(&data)
                    .args(["-U", SUPERUSER, "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "-N"])
                    .arg(format!("--pwfile={}", password_file.display())),
                "initdb",
            )?;
        }
        let password = fs::read_to_string(&password_file)
            .map_err(|e| format!("cannot read {}: {e}", password_file.display()))?
            .trim()
            .to_string();

        // A server left running by an earlier, killed run would hold the data folder.
        let _ = command(&binaries.program("pg_ctl"), owner, &root)
            .arg("-D")
            .arg(&data)
            .args(["stop", "-m", "fast", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();

        let tls_files = match tls {
            Some(tls) => {
                // PostgreSQL refuses a key that others may read: it is the server user's, mode 0600.
                let (cert, key) = (root.join("server.crt"), root.join("server.key"));
                write_private(&cert, &tls.cert_pem, owner)?;
                write_private(&key, &tls.key_pem, owner)?;
                Some((cert, key))
            }
            None => None,
        };
        let port = free_port()?;
        let settings = settings.to_vec();
        let mut server =
            Self { binaries, root, port, password, owner, guardian: None, durability, tls_files, settings };
        server.resume()?;
        server.guardian = Some(spawn_guardian(&server.binaries, owner, &server.root, &data, remove_on_exit)?);
        Ok(server)
    }

    /// Starts the server again after `pause`, on the same port with the same data.
    pub fn resume(&mut self) -> Result<(), String> {
        let port = self.port;
        let mut options =
            format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections=300");
        if self.durability == Durability::Throwaway {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        if let Some((cert, key)) = &self.tls_files {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file='{}' -c ssl_key_file='{}'",
                cert.display(),
                key.display()
            ));
        }
        for (name, value) in &self.settings {
            // pg_ctl hands -o to /bin/sh: in single quotes a value stays one argument, spaces
            // and `%p` included; a quote inside could not be passed that way.
            if value.contains('\'') {
                return Err(format!("server setting {name}: a value with a single quote is not supported"));
            }
            options.push_str(&format!(" -c {name}='{value}'"));
        }
        run(
            command(&self.binaries.program("pg_ctl"), self.owner, &self.root)
                .arg("-D")
                .arg(self.root.join("data"))
                .arg("-l")
                .arg(self.root.join("server.log"))
                .args(["-o", &options, "-w", "-t", "60", "start"])
                .stdout(Stdio::null()),
            "pg_ctl start",
        )
    }

    /// Stops the server (an outage, for fault tests) without giving it up: `resume` starts it
    /// again. `mode` is pg_ctl's shutdown mode: "fast" (clients are disconnected, a clean
    /// checkpoint) or "immediate" (as if the machine lost power, minus the lost page cache).
    pub fn pause(&mut self, mode: &str) -> Result<(), String> {
        run(
            command(&self.binaries.program("pg_ctl"), self.owner, &self.root)
                .arg("-D")
                .arg(self.root.join("data"))
                .args(["stop", "-m", mode, "-w", "-t", "60"])
                .stdout(Stdio::null()),
            "pg_ctl stop",
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password (for a pooler's user list).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The user the server runs as (None: ourselves).
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }

    /// A URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}", self.password, self.port)
    }

    /// The postmaster's process id and those of its children (the backends, the background
    /// processes): what a test stops with SIGSTOP to freeze the whole server. Empty when the
    /// server is not running.
    pub fn processes(&self) -> Vec<u32> {
        let pid_file = std::fs::read_to_string(self.root.join("data").join("postmaster.pid")).unwrap_or_default();
        let Some(postmaster) = pid_file.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else {
            return Vec::new();
        };
        // /proc/PID/task/PID/children lists the direct children (Linux 3.5+).
        let children =
            std::fs::read_to_string(format!("/proc/{postmaster}/task/{postmaster}/children")).unwrap_or_default();
        std::iter::once(postmaster).chain(children.split_whitespace().filter_map(|c| c.parse().ok())).collect()
    }

    /// The data folder (`root/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn log_file(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// Stops the server now and waits for it.
    pub fn stop(&mut self) {
        let _ = command(&self.binaries.program("pg_ctl"), self.owner, &self.root)
            .arg("-D")
            .arg(self.root.join("data"))
            .args(["stop", "-m", "fast", "-w"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(mut guardian) = self.guardian.take() {
            drop(guardian.stdin.take());
            let _ = guardian.wait();
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The user the server runs as: ourselves, or `postgres` when we are root.
pub(crate) fn unprivileged_owner() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    if let Some(ids) = lookup_user(SUPERUSER) {
        return Ok(Some(ids));
    }
    let status = Command::new("useradd")
        .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SUPERUSER])
        .status()
        .map_err(|e| format!("running as root, and user {SUPERUSER} is missing; useradd failed: {e}"))?;
    if !status.success() {
        return Err(format!("running as root, and user {SUPERUSER} is missing; useradd failed"));
    }
    lookup_user(SUPERUSER).map(Some).ok_or_else(|| format!("user {SUPERUSER} not found after useradd"))
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[0] == name).then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
    })
}

pub(crate) fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
    }
    Ok(())
}

/// A file only its owner can read (the server's user must read it for initdb).
pub(crate) fn write_private(path: &Path, contents: &str, owner: Option<(u32, u32)>) -> Result<(), String> {
    let mut file = fs::File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    file.write_all(contents.as_bytes()).map_err(|e| e.to_string())?;
    chown(path, owner)
}

pub(crate) fn command(program: &Path, owner: Option<(u32, u32)>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).env_remove("PGDATA").env_remove("PGPORT");
    // Its own process group: Ctrl-C in a terminal reaches us, and we stop the server in order
    // after the services have drained.
    cmd.process_group(0);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let output = cmd.stderr(Stdio::piped()).output().map_err(|e| format!("{what} could not start: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

pub(crate) fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}

pub(crate) fn random_password() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A shell that waits for our end of its stdin to close (we exited, however), then stops the
/// server and, for throwaway servers, removes its files.
fn spawn_guardian(
    binaries: &PgBinaries,
    owner: Option<(u32, u32)>,
    root: &Path,
    data: &Path,
    remove_on_exit: bool,
) -> Result<Child, String> {
    let script =
        r#"cat >/dev/null; "$1" -D "$2" stop -m fast -w >/dev/null 2>&1; if [ "$4" = yes ]; then rm -rf "$3"; fi"#;
    let mut cmd = command(Path::new("/bin/sh"), owner, root);
    cmd.arg("-c")
        .arg(script)
        .arg("guardian")
        .arg(binaries.program("pg_ctl"))
        .arg(data)
        .arg(root)
        .arg(if remove_on_exit { "yes" } else { "no" })
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().map_err(|e| format!("cannot start the guardian process: {e}"))
}
