//! Health that follows the database: SERVING only while PostgreSQL answers.

use sqlx::PgPool;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets the overall status ("") and each named service's status.
pub async fn set_all(reporter: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in services {
        reporter.set_service_status(*name, status).await;
    }
}

/// True when the database answers a trivial query in time.
pub async fn database_answers(pool: &PgPool) -> bool {
    matches!(tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await, Ok(Ok(_)))
}

/// Probes the database every second and keeps the health statuses in step, until aborted.
pub fn spawn_database_probe(
    pool: PgPool,
    reporter: HealthReporter,
    services: &'static [&'static str],
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(probe_database(pool, reporter, services))
}

/// The probe loop itself, for callers that run it inside a task of their own.
pub async fn probe_database(pool: PgPool, reporter: HealthReporter, services: &'static [&'static str]) {
    let mut last = None;
    loop {
        let status = if database_answers(&pool).await { ServingStatus::Serving } else { ServingStatus::NotServing };
        if last != Some(status) {
            if status == ServingStatus::NotServing {
                tracing::warn!("database not answering: health is NOT_SERVING");
            } else {
                tracing::info!("database answering: health is SERVING");
            }
            set_all(&reporter, services, status).await;
            last = Some(status);
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// The `healthcheck` subcommand of the binaries (for container health checks without extra
/// tools): asks the server at `addr` whether `service` is SERVING. Exit code 0 if so.
pub async fn check_command(addr: std::net::SocketAddr, service: &str) -> std::process::ExitCode {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let addr =
        if addr.ip().is_unspecified() { std::net::SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let check = async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect_timeout(PROBE_TIMEOUT)
            .timeout(PROBE_TIMEOUT)
            .connect()
            .await?;
        let response = HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await?;
        Ok::<_, Box<dyn std::error::Error>>(response.into_inner().status())
    };
    match check.await {
        Ok(tonic_health::pb::health_check_response::ServingStatus::Serving) => std::process::ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("{service} at {addr}: {status:?}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{service} at {addr}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
