//! Assembling and running a service's gRPC server: the service's routes plus standard health,
//! reflection v1 and v1alpha, and a graceful shutdown that turns health NOT_SERVING first.

use crate::database::Db;
use crate::server::access_log::AccessLogLayer;
use crate::server::call_limits::{CallLimitsLayer, MAX_CONCURRENT_STREAMS_PER_CONNECTION};
use crate::server::connections::ConnectionCounts;
use crate::server::endpoint::EndpointConfig;
use crate::server::in_flight::InFlight;
use crate::server::metrics::SampledGauge;
use crate::server::startup_gate::{Ready, Startup, StartupGateLayer};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;

/// How a server runs beyond its routes: the drain time, TLS, metrics (and the service's own
/// gauges), and the browser origins allowed over gRPC-Web.
pub struct ServeExtras {
    /// How long a graceful stop waits for calls in flight.
    pub drain: Duration,
    /// TLS and the metrics listener.
    pub endpoint: EndpointConfig,
    /// Service-specific gauges for `/metrics` (auth-service's bcrypt queue).
    pub gauges: Vec<SampledGauge>,
    /// Browser origins allowed to call over gRPC-Web.
    pub cors: crate::server::grpc_web::CorsOrigins,
}

/// Serves `routes` on `listener` until `shutdown` resolves, then lets in-flight calls finish for
/// at most `drain`; calls still open then (long streams such as health Watch) are cut.
/// `services` are the fully qualified names reported by the health service.
///
/// The port answers at once; `startup` (migrations, key registration: waiting for the database
/// as long as it takes) runs meanwhile, with health NOT_SERVING and the service's own calls
/// refused with UNAVAILABLE. When it succeeds health follows the database; when it fails the
/// server stops and its error is returned.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    pool: Db,
    services: &'static [&'static str],
    extras: ServeExtras,
    startup: Startup,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let limits = extras.endpoint.connections;
    let connections = crate::server::connections::counts(limits);
    let mut gauges = extras.gauges;
    gauges.extend(connection_gauges(&connections));
    // The endpoint stops when this function returns (dropped), however it returns.
    let (metrics, _metrics_endpoint) = match extras.endpoint.metrics_addr {
        Some(addr) => {
            let (grpc, endpoint) = crate::server::metrics::start(addr, services, &pool, gauges).await?;
            (Some(grpc), Some(endpoint))
        }
        None => (None, None),
    };
    let tls = extras.endpoint.tls.as_ref().map(|files| files.acceptor()).transpose()?;
    let reporter = tonic_health::server::HealthReporter::new();
    let health_service = crate::server::health_service::service(&reporter);
    crate::server::health::set_all(&reporter, services, ServingStatus::NotServing).await;
    let ready = Ready::default();
    let activity = pool.activity().clone();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let background = {
        let (ready, reporter) = (ready.clone(), reporter.clone());
        tokio::spawn(async move {
            if let Err(e) = ready.scope(startup).await {
                let _ = failed_tx.send(e);
                return;
            }
            ready.set();
            tracing::info!("start-up done: serving calls");
            crate::server::health::probe_database(pool, reporter, services, ready).await
        })
    };
    let failure = std::sync::Arc::new(std::sync::Mutex::new(None::<anyhow::Error>));

    // The error detail messages (ErrorInfo, BadRequest) are registered too, so that grpcurl
    // can print them; only this server's own services are listed.
    let reflection = || {
        services.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(todo_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health"),
            |builder, name| builder.with_service_name(*name),
        )
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let routes = routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);

    let drain = extras.drain;
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let failed = failure.clone();
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            Ok(e) = failed_rx => {
                tracing::error!(error = %format!("{e:#}"), "start-up failed: stopping");
                *failed.lock().expect("no panics while holding this lock") = Some(e);
            }
        }
        tracing::info!(?drain, "shutting down: health NOT_SERVING, draining in-flight calls");
        background.abort();
        crate::server::health::set_all(&reporter, services, ServingStatus::NotServing).await;
        let _ = draining_tx.send(());
    };

    tracing::info!(addr = %listener.local_addr()?, tls = extras.endpoint.tls.is_some(), "serving");
    let in_flight = InFlight::default();
    let server = Server::builder()
        .accept_http1(true) // gRPC-Web from browsers
        .layer(crate::server::grpc_web::layer(&extras.cors))
        .layer(AccessLogLayer(in_flight.clone(), metrics))
        .layer(CallLimitsLayer)
        .layer(StartupGateLayer { ready, domain: domain_of(services), activity: activity.clone() })
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(MAX_CONCURRENT_STREAMS_PER_CONNECTION as usize)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            crate::server::connections::incoming(listener, tls, limits, connections),
            shutdown,
        );
    // On the stop tonic stops accepting and shuts every connection down gracefully (HTTP/2:
    // GOAWAY, a PING round trip, GOAWAY with the last stream it took), then returns once every
    // connection has closed; h2 closes one only when its last stream's response (trailers
    // included) is written. So returning with the server means no call it took is cut, and an
    // idle client's connection closes one round trip after the stop. What can hold it is a
    // stream that stays open or a client that never answers: the drain time bounds them.
    let drain_over = async move {
        // Err means the shutdown future was dropped: the server has already returned.
        if draining_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(drain).await;
    };
    tokio::pin!(server);
    tokio::select! {
        biased;
        result = &mut server => result?,
        _ = drain_over => {
            // The connections are tasks of their own: they end with the process.
            tracing::warn!(calls_open = in_flight.current(), "drain time over: closing the connections still open");
        }
    }
    tracing::info!("stopped");
    match failure.lock().expect("no panics while holding this lock").take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `server_connections` and `server_connections_refused` for `/metrics`.
fn connection_gauges(counts: &std::sync::Arc<ConnectionCounts>) -> [SampledGauge; 2] {
    let (open, refused) = (counts.clone(), counts.clone());
    [
        SampledGauge::new("server_connections", "Connections open now, TLS handshakes included", move || {
            i64::try_from(open.open()).unwrap_or(i64::MAX)
        }),
        SampledGauge::new(
            "server_connections_refused",
            "Connections closed at accept since start because MAX_CONNECTIONS were open",
            move || i64::try_from(refused.refused()).unwrap_or(i64::MAX),
        ),
    ]
}

/// The ErrorInfo domain of a service name: "todo.task" for "todo.task.v1.TaskService".
fn domain_of(services: &[&str]) -> &'static str {
    match services.first() {
        Some(name) if name.starts_with("todo.auth.") => crate::server::status::AUTH_DOMAIN,
        _ => crate::server::status::TASK_DOMAIN,
    }
}

/// Resolves on SIGINT or SIGTERM: what the binaries pass as their shutdown future.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.expect("installing the SIGINT handler cannot fail on a normal process");
    };
    #[cfg(unix)]
    let terminate = async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler cannot fail on a normal process")
            .recv()
            .await;
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
