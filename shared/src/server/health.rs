//! Health that follows the database: SERVING only while PostgreSQL answers.

use crate::database::Db;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How often the database is probed while it answers. A stopped database shows at the next
/// probe (its connection breaks or is refused); one that stops answering, after `PROBE_TIMEOUT`.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// While it does not answer, probes follow each other closely: the service serves again within
/// moments of the database's return.
const PROBE_INTERVAL_WHILE_DOWN: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connecting may take longer than a query (TLS, SCRAM on a busy machine); a refused
/// connection fails at once anyway.
const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets the overall status ("") and each named service's status.
pub async fn set_all(reporter: &HealthReporter, services: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in services {
        reporter.set_service_status(*name, status).await;
    }
}

/// True when the database answers a trivial query in time.
pub async fn database_answers(pool: &Db) -> bool {
    matches!(tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(pool)).await, Ok(Ok(_)))
}

/// Probes the database every second while the service has calls and keeps the health statuses
/// in step, until aborted.
pub fn spawn_database_probe(
    pool: Db,
    reporter: HealthReporter,
    services: &'static [&'static str],
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(probe_database(pool, reporter, services, crate::server::startup_gate::Ready::default()))
}

/// The probe loop itself, for callers that run it inside a task of their own. It tells `ready`
/// too, so that calls are refused at once while the database is known to be away instead of
/// each waiting out the pool's acquire timeout.
pub async fn probe_database(
    pool: Db,
    reporter: HealthReporter,
    services: &'static [&'static str],
    ready: crate::server::startup_gate::Ready,
) {
    // A connection of its own, not the pool's: a pool busy with slow calls is not an outage,
    // and a single connect attempt tells "refused" at once where the pool would retry.
    let options = (*pool.pool().connect_options()).clone();
    let activity = pool.activity().clone();
    let mut connection: Option<sqlx::PgConnection> = None;
    let mut last = None;
    loop {
        let probe = probe_once(&options, &mut connection).await;
        if last != Some(probe) {
            match probe {
                Probe::Answered => tracing::info!("database answering: health is SERVING"),
                Probe::Slow => tracing::warn!("database slow to answer: health is NOT_SERVING"),
                Probe::Unreachable => {
                    tracing::warn!("database unreachable: health is NOT_SERVING, calls are refused with UNAVAILABLE")
                }
            }
            // Only a database that refuses or drops connections turns calls away at once; a slow
            // one (a busy machine) still gets them, each bounded by its deadline.
            ready.set_database_down(probe == Probe::Unreachable);
            let status = if probe == Probe::Answered { ServingStatus::Serving } else { ServingStatus::NotServing };
            set_all(&reporter, services, status).await;
            last = Some(probe);
        }
        if probe == Probe::Answered && !activity.is_active() {
            // No calls for a while: no probe either, or a serverless database would never
            // suspend. Health stays SERVING (the database answered last), and the first call
            // wakes the probe. The connection goes: a suspended compute closes it anyway.
            tracing::debug!("no calls: the database probe pauses until the next one");
            connection = None;
            activity.until_active().await;
            continue;
        }
        tokio::time::sleep(if probe == Probe::Answered { PROBE_INTERVAL } else { PROBE_INTERVAL_WHILE_DOWN }).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Answered,
    /// No answer in time: busy, or a network that drops packets.
    Slow,
    /// Refused, reset or closed: the database is not there.
    Unreachable,
}

/// One probe: connect if needed, then `SELECT 1` within `PROBE_TIMEOUT`; a failed connection
/// is dropped so that the next probe connects afresh. A kept connection that breaks counts at
/// once (a primary that died, a pooler restarted): the probe drops its connection when it pauses
/// for an idle spell, so one closed meanwhile (a serverless compute suspending) is never probed.
async fn probe_once(options: &sqlx::postgres::PgConnectOptions, connection: &mut Option<sqlx::PgConnection>) -> Probe {
    use sqlx::Connection;
    if connection.is_none() {
        match tokio::time::timeout(PROBE_CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(options)).await {
            Ok(Ok(fresh)) => *connection = Some(fresh),
            Ok(Err(_)) => return Probe::Unreachable,
            Err(_) => return Probe::Slow,
        }
    }
    let Some(conn) = connection.as_mut() else { return Probe::Unreachable };
    // The simple protocol: no prepared statement, which a pooler in transaction mode could hand
    // to another server connection.
    let probe = match tokio::time::timeout(PROBE_TIMEOUT, sqlx::Executor::execute(conn, "SELECT 1")).await {
        Ok(Ok(_)) => Probe::Answered,
        Ok(Err(_)) => Probe::Unreachable,
        Err(_) => Probe::Slow,
    };
    if probe != Probe::Answered {
        *connection = None;
    }
    probe
}

/// The `healthcheck` subcommand of the binaries (for container health checks without extra
/// tools): asks the server at `addr` (over TLS with `tls`) whether `service` is SERVING.
/// Exit code 0 if so.
pub async fn check_command(
    addr: std::net::SocketAddr,
    service: &str,
    tls: Option<crate::server::tls::CheckTls>,
) -> std::process::ExitCode {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let addr =
        if addr.ip().is_unspecified() { std::net::SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let check = async {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Channel::from_shared(format!("{scheme}://{addr}"))?;
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.client_config())?;
        }
        let channel = endpoint.connect_timeout(PROBE_TIMEOUT).timeout(PROBE_TIMEOUT).connect().await?;
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
