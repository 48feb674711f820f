//! The server runtime both services run on: `serve` assembles the tonic server with its layers
//! (access log and metrics, call limits, start-up gate, gRPC-Web/CORS, `require_caller`), health
//! and reflection, TLS and graceful stop, on the connections `connections` accepts (bounded, each
//! with a handshake deadline); `service_main` is each binary's `main`; `status` maps
//! errors to gRPC statuses with ErrorInfo. Uses the access and database parts.

pub mod access_log;
pub mod call_limits;
pub mod call_rate;
pub mod connections;
pub mod endpoint;
pub mod grpc_web;
pub mod health;
pub mod health_service;
pub mod in_flight;
pub mod metrics;
pub mod proto_time;
pub mod require_caller;
pub mod serve;
pub mod service_main;
pub mod startup_gate;
pub mod status;
pub mod telemetry;
pub mod tls;

pub use endpoint::EndpointConfig;
