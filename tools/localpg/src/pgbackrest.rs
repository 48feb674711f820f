//! pgBackRest (Debian's 2.45) for one private server: WAL archiving into a repository of its
//! own, full backups, and a point-in-time restore into a fresh data folder. The restore drill
//! (tools/faults/tests/restore.rs) runs it; the README's "Backup and recovery" shows the same
//! commands for a real server.
//!
//! Everything (repository, configuration, logs, locks, the server's Unix socket) lives under one
//! private folder, and every call passes `--config`, so neither a system configuration in
//! /etc/pgbackrest nor another stanza is touched. pgBackRest reads the data folder and so runs
//! as the server's user (`postgres` when we are root, as [`PrivatePostgres`] does). It talks to
//! PostgreSQL over a Unix socket only (no TCP option for a local server): the server is started
//! with [`PgBackRest::server_settings`], which give it a socket folder here, and pgBackRest
//! authenticates with a private password file.

use crate::PrivatePostgres;
use crate::server::{SUPERUSER, chown, command, run, unprivileged_owner, write_private};
use crate::system_tool::PGBACKREST;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The stanza: pgBackRest's name for the one cluster it backs up here.
pub const STANZA: &str = "drill";

/// A pgBackRest repository and configuration for one server. Its files stay until the caller
/// removes the folder.
pub struct PgBackRest {
    program: PathBuf,
    root: PathBuf,
    config: PathBuf,
    socket_dir: PathBuf,
    owner: Option<(u32, u32)>,
    /// The cluster the stanza describes: its data folder and port (once [`PgBackRest::attach`]ed).
    pg: Option<(PathBuf, u16)>,
}

impl PgBackRest {
    /// Makes the private folder under `root` (repository, logs, locks, spool, socket; mode 0700,
    /// the server's user's). Tests call `system_tool::PGBACKREST.require()` first; this errs,
    /// naming the package, when pgBackRest is missing.
    pub fn create(root: &Path) -> Result<Self, String> {
        let program = PGBACKREST.find()?;
        let owner = unprivileged_owner()?;
        fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let root = root.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", root.display()))?;
        for dir in ["", "repo", "log", "lock", "spool", "socket"] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
            chown(&dir, owner)?;
        }
        let backrest = PgBackRest {
            program,
            config: root.join("pgbackrest.conf"),
            socket_dir: root.join("socket"),
            root,
            owner,
            pg: None,
        };
        backrest.write_config()?;
        Ok(backrest)
    }

    /// The server settings that archive every WAL segment into the repository (synchronously:
    /// a segment counts as archived once it is there) and open the Unix socket pgBackRest
    /// connects to. For [`PrivatePostgres::start_with_settings`].
    pub fn server_settings(&self) -> Vec<(String, String)> {
        let archive_command =
            format!("{} --config={} --stanza={STANZA} archive-push %p", self.program.display(), self.config.display());
        vec![
            ("archive_mode".into(), "on".into()),
            ("archive_command".into(), archive_command),
            ("wal_level".into(), "replica".into()),
            ("max_wal_senders".into(), "3".into()),
            ("unix_socket_directories".into(), self.socket_dir.display().to_string()),
        ]
    }

    /// Points the stanza at `server` (started with [`PgBackRest::server_settings`]): its data
    /// folder, its port, and its superuser's password in a private password file.
    pub fn attach(&mut self, server: &PrivatePostgres) -> Result<(), String> {
        // libpq's format: host:port:database:user:password; the host of a socket is its folder.
        write_private(&self.root.join("pgpass"), &format!("*:*:*:{SUPERUSER}:{}\n", server.password()), self.owner)?;
        self.pg = Some((server.data_dir(), server.port()));
        self.write_config()
    }

    /// `stanza-create`: the repository's record of this cluster (its system id and version).
    pub fn stanza_create(&self) -> Result<(), String> {
        self.run(&["stanza-create"], "stanza-create")
    }

    /// `check`: the configuration is right and a WAL segment reaches the repository (it forces
    /// a segment switch and waits for the segment to be archived).
    pub fn check(&self) -> Result<(), String> {
        self.run(&["check"], "check")
    }

    /// A full backup, starting at once (`start-fast`: an immediate checkpoint); returns when the
    /// backup and the WAL it needs are in the repository.
    pub fn backup_full(&self) -> Result<(), String> {
        self.run(&["backup", "--type=full"], "backup")
    }

    /// Restores the latest backup taken before `target_time` (a PostgreSQL timestamp with its
    /// zone, e.g. `now()::text`) into `new_data_dir` (created; it must be empty), set to replay
    /// the archived WAL up to that time and then promote (open for writes on a new timeline).
    /// The stanza then describes `new_data_dir`: [`PgBackRest::attach`] the server started on it.
    pub fn restore_to_time(&mut self, target_time: &str, new_data_dir: &Path) -> Result<(), String> {
        fs::create_dir_all(new_data_dir).map_err(|e| format!("cannot create {}: {e}", new_data_dir.display()))?;
        fs::set_permissions(new_data_dir, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
        chown(new_data_dir, self.owner)?;
        let port = self.pg.as_ref().map_or(5432, |(_, port)| *port);
        self.pg = Some((new_data_dir.to_path_buf(), port));
        // The restore_command it writes reads this configuration, so that must name the new
        // folder before the restored server asks for its first segment.
        self.write_config()?;
        self.run(
            &[
                "restore",
                "--type=time",
                &format!("--target={target_time}"),
                "--target-action=promote",
                &format!("--pg1-path={}", new_data_dir.display()),
            ],
            "restore",
        )
    }

    /// The folder of pgBackRest's own logs (one file per stanza and command).
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("log")
    }

    fn write_config(&self) -> Result<(), String> {
        let mut config = format!(
            "[global]\n\
             repo1-path={root}/repo\n\
             repo1-retention-full=2\n\
             log-path={root}/log\n\
             lock-path={root}/lock\n\
             spool-path={root}/spool\n\
             start-fast=y\n\
             archive-async=n\n\
             compress-type=none\n\
             log-level-console=off\n\
             log-level-stderr=warn\n\
             log-level-file=info\n\
             \n\
             [{STANZA}]\n\
             pg1-socket-path={socket}\n\
             pg1-user={SUPERUSER}\n",
            root = self.root.display(),
            socket = self.socket_dir.display(),
        );
        if let Some((data, port)) = &self.pg {
            config.push_str(&format!("pg1-path={}\npg1-port={port}\n", data.display()));
        }
        write_private(&self.config, &config, self.owner)
    }

    /// `pgbackrest --config=… --stanza=drill <args>` as the server's user; an error carries
    /// pgBackRest's standard error.
    fn run(&self, args: &[&str], what: &str) -> Result<(), String> {
        let mut cmd: Command = command(&self.program, self.owner, &self.root);
        cmd.arg(format!("--config={}", self.config.display()))
            .arg(format!("--stanza={STANZA}"))
            .args(args)
            .env("PGPASSFILE", self.root.join("pgpass"))
            .stdout(Stdio::null());
        // Settings of the caller's own pgBackRest must not leak in.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PGBACKREST_") {
                cmd.env_remove(name);
            }
        }
        run(&mut cmd, &format!("pgbackrest {what}")).map_err(|e| format!("{e} (logs in {})", self.log_dir().display()))
    }
}
