//! The parts both services share: configuration from the environment, the database pool and
//! migrations, access-token verification, the mapping of errors to gRPC statuses, health and
//! reflection wiring, and telemetry.

pub mod access_log;
pub mod call_limits;
pub mod caller;
pub mod config;
pub mod db;
pub mod grpc_server;
pub mod grpc_web;
pub mod health;
pub mod in_flight;
pub mod keyring;
pub mod metrics;
pub mod proto_time;
pub mod revocation;
pub mod service_main;
pub mod startup;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod token;

pub use caller::Caller;
