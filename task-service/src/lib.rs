//! task-service: each user's tasks (todo.task.v1.TaskService).
//!
//! Every call passes through `RequireCaller`, which verifies the access token locally with the
//! keys auth-service registered in the database and checks the session against the revocations
//! it hears of by LISTEN; task-service never calls auth-service, so it starts and serves whether
//! or not auth-service is up.

pub mod config;
pub mod domain;
pub mod error;
pub mod page_token;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use todo_proto::task::v1::task_service_server::TaskServiceServer;
use todo_shared::caller::{Authenticator, RequireCaller};
use todo_shared::keyring::KeyRing;
use todo_shared::revocation::Revocations;
use todo_shared::status::TASK_DOMAIN;
use todo_shared::token::TokenVerifier;
use tokio::net::TcpListener;

pub use config::TaskConfig;

/// The fully qualified service name, as reported by health.
pub const SERVICE_NAME: &str = "todo.task.v1.TaskService";

/// Runs task-service on `listener` until `shutdown` resolves and in-flight calls have finished.
pub async fn serve(
    listener: TcpListener,
    config: TaskConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tracing::info!(db = ?config.db, "starting task-service");
    let pool = todo_shared::db::prepare(&config.db).await?;
    let keyring = KeyRing::load(pool.clone()).await;
    // Until the listener is live, sessions are checked in the database per call.
    let revocations = Revocations::new(pool.clone(), config.revocation_window);
    let listener_task = revocations.spawn_listener(keyring.clone());
    let authenticator = Arc::new(Authenticator { verifier: TokenVerifier::new(keyring, &config.token), revocations });
    let api = TaskServiceServer::new(service::TaskApi { pool: pool.clone() });
    let routes = tonic::service::Routes::new(RequireCaller::new(api, authenticator, TASK_DOMAIN));
    let served = todo_shared::grpc_server::serve(
        listener,
        routes,
        pool.clone(),
        &[SERVICE_NAME],
        config.drain_timeout,
        todo_shared::grpc_server::ServeExtras { endpoint: config.endpoint.clone(), gauges: Vec::new() },
        shutdown,
    )
    .await;
    listener_task.abort();
    pool.close().await;
    served?;
    Ok(())
}
