//! auth-service end to end: the real server on port 0 over a fresh database, called through the
//! generated client, asserting codes, ErrorInfo reasons and what is in the database.

mod account;
mod connections;
mod grpc_web;
mod login;
mod metrics;
mod refresh;
mod security;
mod server;
mod sessions;
mod sign_up;
mod tls;
mod tokens;
