//! Connections (shared server code, tried on auth-service): at most `MAX_CONNECTIONS` open, and
//! each must finish its TLS handshake and send the start of its first HTTP request within
//! `HANDSHAKE_TIMEOUT_SECONDS` of being accepted, or the server closes it. A client that opens
//! connections and sends nothing cannot hold the server's slots, and one already connected keeps
//! being served while the limit is reached.

use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::scrape::{free_local_addr, scrape, wait_until_up};
use testkit::test_database::TestDatabase;
use testkit::tls::{TempDir, TestCa};
use todo_shared::server::connections::ConnectionLimits;
use todo_shared::server::tls::TlsFiles;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How long after `since` the server closed `stream` (EOF or reset), reading and dropping what
/// it sends meanwhile; panics if it is still open after `limit`.
async fn closed_after(stream: &mut (impl AsyncRead + Unpin), since: Instant, limit: Duration) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!("the connection is still open after {limit:?}"),
            Ok(Ok(0) | Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => continue, // the server's own bytes (its SETTINGS, a TLS alert)
        }
    }
}

/// Whether the server answers health checks on `channel` with SERVING within 10 s (start-up
/// included).
async fn serving(channel: Channel) -> bool {
    let mut health = HealthClient::new(channel);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = health.check(HealthCheckRequest { service: String::new() }).await;
        let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
        if reply.is_ok_and(|r| r.into_inner().status == serving) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_connection_that_does_not_start_http_within_the_handshake_timeout_is_closed() {
    let db = TestDatabase::new().await;
    let mut config = testkit::auth_config(&db);
    config.endpoint.connections = ConnectionLimits { max_connections: 64, handshake_timeout: Duration::from_secs(1) };
    let metrics_addr = free_local_addr();
    config.endpoint.metrics_addr = Some(metrics_addr);
    let server = testkit::spawn_auth(config).await;
    let channel = testkit::channel(server.addr).await;
    assert!(serving(channel.clone()).await);

    // Nothing at all, then the first 16 of the preface's 24 bytes: both closed at the deadline.
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for stream in [&mut silent, &mut slow] {
        let closed = closed_after(stream, started, Duration::from_secs(5)).await;
        assert!(closed >= Duration::from_millis(900), "closed after {closed:?}, before the timeout");
    }

    // The client that spoke HTTP/2 in time keeps its connection past the deadline.
    wait_until_up(metrics_addr).await;
    let metrics = scrape(metrics_addr).await;
    assert_eq!(metrics.value("server_connections", &[]), Some(1.0), "{}", metrics.0);
    assert!(serving(channel).await);
}

#[tokio::test]
async fn over_tls_a_stalled_handshake_and_a_silent_session_are_closed() {
    let ca = TestCa::new("todo test CA");
    let files = TempDir::new();
    let cert = ca.server_cert(&["localhost"]);
    let db = TestDatabase::new().await;
    let mut config = testkit::auth_config(&db);
    config.endpoint.tls = Some(TlsFiles {
        cert: files.write("server.pem", &cert.cert_pem),
        key: files.write("server.key", &cert.key_pem),
    });
    config.endpoint.connections = ConnectionLimits { max_connections: 64, handshake_timeout: Duration::from_secs(1) };
    let server = testkit::spawn_auth(config).await;

    // A TCP connection that never sends its ClientHello.
    let started = Instant::now();
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    let closed = closed_after(&mut stalled, started, Duration::from_secs(5)).await;
    assert!(closed >= Duration::from_millis(900), "closed after {closed:?}, before the timeout");

    // A full TLS handshake (ALPN h2), then nothing: closed at the same deadline.
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for der in rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    let started = Instant::now();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut session = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp).await.unwrap();
    assert_eq!(session.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let closed = closed_after(&mut session, started, Duration::from_secs(5)).await;
    assert!(closed >= Duration::from_millis(900), "closed after {closed:?}, before the timeout");
}

#[tokio::test]
async fn past_max_connections_a_new_connection_is_closed_at_once_and_open_ones_are_served() {
    let db = TestDatabase::new().await;
    let mut config = testkit::auth_config(&db);
    config.endpoint.connections = ConnectionLimits { max_connections: 3, handshake_timeout: Duration::from_secs(30) };
    let metrics_addr = free_local_addr();
    config.endpoint.metrics_addr = Some(metrics_addr);
    let server = testkit::spawn_auth(config).await;
    let served = testkit::channel(server.addr).await;
    assert!(serving(served.clone()).await);

    // Two silent connections fill the other slots; the next one is closed at once, long before
    // the handshake timeout could have closed it.
    let mut silent =
        vec![TcpStream::connect(server.addr).await.unwrap(), TcpStream::connect(server.addr).await.unwrap()];
    let started = Instant::now();
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    let closed = closed_after(&mut refused, started, Duration::from_secs(5)).await;
    assert!(closed < Duration::from_secs(2), "closed only after {closed:?}");
    assert!(serving(served.clone()).await, "the connection already open is still served");
    wait_until_up(metrics_addr).await;
    let metrics = scrape(metrics_addr).await;
    assert_eq!(metrics.value("server_connections", &[]), Some(3.0), "{}", metrics.0);
    assert_eq!(metrics.value("server_connections_refused", &[]), Some(1.0), "{}", metrics.0);

    // Once they close, their slots are free again.
    silent.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    while scrape(metrics_addr).await.value("server_connections", &[]) != Some(1.0) {
        assert!(Instant::now() < deadline, "the closed connections' slots were not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serving(testkit::channel(server.addr).await).await, "a new client connects");
}
