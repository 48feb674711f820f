//! A private PostgreSQL for `devstack` and the test suites, started from the machine's own
//! binaries (initdb and pg_ctl on PATH or under /usr/lib/postgresql/<newest>/bin).
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then the server runs as the
//! unprivileged `postgres` user (created if missing), which owns the data folder. A guardian
//! process holds a pipe from ours; when our process ends in any way, even by SIGKILL, the pipe
//! closes and the guardian stops the server.

mod binaries;
pub mod patroni;
pub mod pgbackrest;
pub mod pgbouncer;
mod server;
pub mod system_tool;
pub mod test_database;

pub use binaries::{PgBinaries, find_binaries};
pub use server::{Durability, PrivatePostgres, ServerTls};
