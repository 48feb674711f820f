//! What both services share, in three parts whose dependencies point one way only:
//!
//! - [`server`]: the gRPC server runtime (serve, layers, health, TLS, gRPC-Web, metrics,
//!   telemetry, the start-up gate, error statuses), built on
//! - [`access`]: who is calling (token verification, keyring, revocation list, `Caller`), built on
//! - [`database`]: the pool and its executors, the per-call deadline, migrations, waiting for the
//!   database; no gRPC.
//!
//! [`config`] is the environment parsing all three use.

#![warn(missing_docs)]

pub mod access;
pub mod config;
pub mod database;
pub mod server;

pub use access::Caller;
