//! task-service: each user's tasks (todo.task.v1.TaskService).
//!
//! Every call passes through `RequireCaller`, which verifies the access token locally with the
//! keys auth-service registered in the database and checks the session against the revocations
//! it hears of by LISTEN; task-service never calls auth-service, so it starts and serves whether
//! or not auth-service is up.

pub mod config;
pub mod domain;
pub mod error;
pub mod opaque_token;
pub mod page_token;
pub mod service;
pub mod store;
pub mod sync;
pub mod task_message;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use sync::hub::Hub;
use todo_proto::task::v1::task_service_server::TaskServiceServer;
use todo_shared::access::caller::Authenticator;
use todo_shared::access::keyring::KeyRing;
use todo_shared::access::revocation::Revocations;
use todo_shared::access::token::TokenVerifier;
use todo_shared::database::Db;
use todo_shared::server::call_rate::CallRate;
use todo_shared::server::require_caller::RequireCaller;
use todo_shared::server::status::TASK_DOMAIN;
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
    let pool = todo_shared::database::pool(&config.db)?;
    let keyring = Arc::new(KeyRing::new(pool.clone()));
    // Until the listener is live, sessions are checked in the database per call.
    let revocations = Revocations::new(pool.clone(), config.revocation_window);
    let listener_task =
        revocations.spawn_listener_on(keyring.clone(), todo_shared::database::direct_options(&pool, &config.db)?);
    let authenticator =
        Arc::new(Authenticator { verifier: TokenVerifier::new(keyring.clone(), &config.token), revocations });
    let hub = Hub::new();
    let hub_task = hub.spawn_poller(&pool);
    let pruning = spawn_pruning(pool.clone(), config.sync_retention);
    let api = TaskServiceServer::new(service::TaskApi {
        pool: pool.clone(),
        authenticator: authenticator.clone(),
        hub: hub.clone(),
        watch: config.watch,
        max_tasks_per_user: config.max_tasks_per_user,
    })
    .max_decoding_message_size(todo_shared::server::call_limits::MAX_REQUEST_BYTES);
    let routes = tonic::service::Routes::new(RequireCaller::new(
        api,
        authenticator,
        Some(Arc::new(CallRate::new(config.call_rate))),
        TASK_DOMAIN,
    ));
    // Waits for the database as long as it takes; keys load on first use if this load fails.
    let startup = {
        let (pool, db) = (pool.clone(), config.db.clone());
        Box::pin(async move {
            todo_shared::database::migrate_when_ready(&pool, &db).await?;
            if let Err(e) = keyring.reload().await {
                tracing::warn!(error = %e, "could not load verification keys yet; will retry on first use");
            }
            Ok(())
        })
    };
    // Streams end first, each with a status telling the client to come back, so the drain
    // only waits for unary calls.
    let shutdown = async move {
        shutdown.await;
        hub.close(Duration::from_secs(1)).await;
    };
    let served = todo_shared::server::serve::serve(
        listener,
        routes,
        pool.clone(),
        &[SERVICE_NAME],
        todo_shared::server::serve::ServeExtras {
            drain: config.drain_timeout,
            endpoint: config.endpoint.clone(),
            gauges: Vec::new(),
            cors: config.cors_allowed_origins.clone(),
        },
        startup,
        shutdown,
    )
    .await;
    listener_task.abort();
    hub_task.abort();
    pruning.abort();
    pool.close().await;
    served?;
    Ok(())
}

/// Deletes tombstones older than the retention time, an hour apart (every instance does; the
/// work is idempotent), and only while the service has calls: an idle instance sends no
/// statement (`database::activity`), and its round waits for the next call.
fn spawn_pruning(pool: Db, retention: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            pool.activity().until_active().await;
            match sync::feed::prune(&pool, retention).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "pruned tombstones of deleted tasks"),
                Err(e) => tracing::warn!(error = %e, "could not prune the change feed"),
            }
        }
    })
}
