//! What both services share, in three parts whose dependencies point one way only, under the
//! command line ([`cli`], the binaries' subcommands, which may use all three):
//!
//! - [`server`]: the gRPC server runtime (serve, layers, health, TLS, gRPC-Web, metrics,
//!   telemetry, the start-up gate, error statuses), built on
//! - [`access`]: who is calling (token verification, keyring, revocation list, `Caller`), built on
//! - [`database`]: the pool and its executors, the per-call deadline, migrations, waiting for the
//!   database; no gRPC. It is its own crate, `todo-database` in `shared/database/`, so that the
//!   tools needing only the migrations build without tonic, hyper or prometheus.
//!
//! [`env`] is the environment parsing all three use (it lives in the database crate, the one
//! everything builds on).

#![warn(missing_docs)]

pub mod access;
pub mod cli;
pub mod server;

pub use todo_database as database;
pub use todo_database::env;

pub use access::Caller;
