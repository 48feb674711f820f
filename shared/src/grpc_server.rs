//! Assembling and running a service's gRPC server: the service's routes plus standard health,
//! reflection v1 and v1alpha, and a graceful shutdown that turns health NOT_SERVING first.

use crate::access_log::AccessLogLayer;
use crate::config::EndpointConfig;
use crate::in_flight::InFlight;
use crate::metrics::SampledGauge;
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

/// What a server adds to plain gRPC: TLS and metrics settings, and the service's own gauges.
#[derive(Default)]
pub struct ServeExtras {
    pub endpoint: EndpointConfig,
    pub gauges: Vec<SampledGauge>,
    /// Browser origins allowed to call over gRPC-Web.
    pub cors: crate::grpc_web::CorsOrigins,
}

/// Serves `routes` on `listener` until `shutdown` resolves, then lets in-flight calls finish for
/// at most `drain`; calls still open then (long streams such as health Watch) are cut.
/// `services` are the fully qualified names reported by the health service.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    pool: PgPool,
    services: &'static [&'static str],
    drain: Duration,
    extras: ServeExtras,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    // The endpoint stops when this function returns (dropped), however it returns.
    let (metrics, _metrics_endpoint) = match extras.endpoint.metrics_addr {
        Some(addr) => {
            let (grpc, endpoint) = crate::metrics::start(addr, services, &pool, extras.gauges).await?;
            (Some(grpc), Some(endpoint))
        }
        None => (None, None),
    };
    let mut builder = Server::builder();
    if let Some(tls) = &extras.endpoint.tls {
        builder = builder
            .tls_config(tls.server_config()?)
            .map_err(|e| anyhow::anyhow!("TLS_CERT_FILE / TLS_KEY_FILE: the certificate or key is not usable: {e}"))?;
    }
    let (reporter, health_service) = tonic_health::server::health_reporter();
    crate::health::set_all(&reporter, services, ServingStatus::NotServing).await;
    let probe = crate::health::spawn_database_probe(pool, reporter.clone(), services);

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

    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        tracing::info!(?drain, "shutting down: health NOT_SERVING, draining in-flight calls");
        probe.abort();
        crate::health::set_all(&reporter, services, ServingStatus::NotServing).await;
        let _ = draining_tx.send(());
    };

    tracing::info!(addr = %listener.local_addr()?, tls = extras.endpoint.tls.is_some(), "serving");
    let in_flight = InFlight::default();
    let server = builder
        .accept_http1(true) // gRPC-Web from browsers
        .layer(crate::grpc_web::layer(&extras.cors))
        .layer(AccessLogLayer(in_flight.clone(), metrics))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_routes(routes)
        // TCP_NODELAY on every accepted connection: a response goes out as several writes
        // (headers, data, trailers), and Nagle would hold the last ones for the peer's delayed
        // ACK (about 40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(Duration::from_secs(60))),
            shutdown,
        );
    // The server returns by itself once every client has closed its connection; clients that
    // keep an idle connection open would hold it until the drain time, so the stop also ends as
    // soon as no call is being answered.
    let drained = async move {
        // Err means the shutdown future was dropped: the server has already returned.
        if draining_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
        match tokio::time::timeout(drain, in_flight.idle()).await {
            // A moment for the last responses to leave the socket.
            Ok(()) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => tracing::warn!("drain time over: closing the calls still open"),
        }
    };
    tokio::select! {
        result = server => result?,
        _ = drained => {}
    }
    tracing::info!("stopped");
    Ok(())
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
