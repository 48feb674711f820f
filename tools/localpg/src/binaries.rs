//! Finding initdb and pg_ctl.

use std::path::{Path, PathBuf};

/// Where the PostgreSQL server programs are.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub dir: PathBuf,
}

impl PgBinaries {
    /// A program of the same installation: from `dir`, or else from the folder the real
    /// `initdb` lives in (PATH may hold only symlinks to some of them, as /usr/local/bin here).
    pub fn program(&self, name: &str) -> PathBuf {
        let direct = self.dir.join(name);
        if direct.is_file() {
            return direct;
        }
        std::fs::canonicalize(self.dir.join("initdb"))
            .ok()
            .and_then(|initdb| initdb.parent().map(|dir| dir.join(name)))
            .filter(|p| p.is_file())
            .unwrap_or(direct)
    }
}

/// The message shown when nothing is found: what to install, or what to set instead.
pub const NOT_FOUND: &str = "no PostgreSQL server binaries found (initdb and pg_ctl, on PATH or under \
/usr/lib/postgresql/<version>/bin): install PostgreSQL (for example `apt install postgresql`) \
or set DATABASE_URL to a PostgreSQL server of yours";

/// initdb and pg_ctl on PATH first, else the newest /usr/lib/postgresql/<version>/bin.
pub fn find_binaries() -> Result<PgBinaries, String> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server_programs(&dir) {
                return Ok(PgBinaries { dir });
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server_programs(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| PgBinaries { dir }).ok_or_else(|| NOT_FOUND.to_string())
}

fn has_server_programs(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}
