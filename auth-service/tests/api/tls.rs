//! TLS: the gRPC server from TLS_CERT_FILE / TLS_KEY_FILE (certificates made at test time by a
//! test CA), and the pool to a PostgreSQL with ssl=on under `sslmode=verify-full`.

use secrecy::SecretString;
use std::time::Duration;
use testkit::localpg::{Durability, PrivatePostgres, ServerTls, find_binaries};
use testkit::test_database::TestDatabase;
use testkit::tls::{TempDir, TestCa};
use todo_proto::auth::v1::SignUpRequest;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_shared::database::DbConfig;
use todo_shared::server::tls::TlsFiles;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn sign_up(email: &str) -> SignUpRequest {
    SignUpRequest { email: email.into(), password: testkit::PASSWORD.into() }
}

async fn tls_channel(addr: std::net::SocketAddr, ca_pem: &str) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    Channel::from_shared(format!("https://{addr}"))
        .expect("a valid URI")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
}

#[tokio::test]
async fn grpc_over_tls_with_the_ca_and_nothing_in_plaintext() {
    let ca = TestCa::new("todo test CA");
    let files = TempDir::new();
    let server_cert = ca.server_cert(&["localhost"]);
    let tls = TlsFiles {
        cert: files.write("server.pem", &server_cert.cert_pem),
        key: files.write("server.key", &server_cert.key_pem),
    };
    let db = TestDatabase::new().await;
    let mut config = testkit::auth_config(&db);
    config.endpoint.tls = Some(tls);
    let server = testkit::spawn_auth(config).await;

    let channel = tls_channel(server.addr, &ca.cert_pem()).await.expect("a TLS client trusting the CA connects");
    AuthServiceClient::new(channel.clone()).sign_up(sign_up("tls@example.com")).await.expect("a call over TLS");
    // Health and reflection are served on the same TLS port.
    HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await.unwrap();
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());

    // A plaintext client gets no answer...
    let plaintext = async {
        let channel = Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        AuthServiceClient::new(channel).sign_up(sign_up("plain@example.com")).await
    };
    let err = plaintext.await.expect_err("plaintext must not be answered");
    assert!(matches!(err.code(), Code::Unavailable | Code::Unknown | Code::Internal), "{err:?}");
    // ...and neither does a TLS client that trusts another CA.
    let other_ca = TestCa::new("another CA");
    let refused = match tls_channel(server.addr, &other_ca.cert_pem()).await {
        Err(_) => true,
        Ok(channel) => AuthServiceClient::new(channel).sign_up(sign_up("other@example.com")).await.is_err(),
    };
    assert!(refused, "a certificate from an untrusted CA must be refused");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&db.pool).await.unwrap();
    assert_eq!(users, 1, "only the TLS call with the right CA got through");
}

#[tokio::test]
async fn a_bad_certificate_file_stops_the_server_with_the_variable_named() {
    let files = TempDir::new();
    let tls = TlsFiles { cert: files.write("cert.pem", "not a certificate"), key: files.write("key.pem", "nor a key") };
    let db = TestDatabase::new().await;
    let mut config = testkit::auth_config(&db);
    config.endpoint.tls = Some(tls);
    let err = testkit::spawn_auth(config).await.stop().await.unwrap_err();
    assert!(err.to_string().starts_with("TLS_CERT_FILE"), "{err:#}");
}

/// A database URL for the private server with TLS: host `localhost` (the certificate's name).
fn verify_full_url(pg: &PrivatePostgres, root_cert: &std::path::Path) -> String {
    format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url("postgres").replace("@127.0.0.1:", "@localhost:"),
        root_cert.display()
    )
}

fn db_config(url: String, run_migrations: bool) -> DbConfig {
    DbConfig {
        url: SecretString::from(url),
        direct_url: None,
        max_connections: 3,
        pool_mode: Default::default(),
        run_migrations,
    }
}

#[tokio::test]
async fn postgres_verify_full_against_a_server_with_a_test_ca() {
    let ca = TestCa::new("PostgreSQL test CA");
    let pg_cert = ca.server_cert(&["localhost"]);
    let files = TempDir::new();
    let ca_file = files.write("ca.pem", &ca.cert_pem());
    let other_ca_file = files.write("other-ca.pem", &TestCa::new("another CA").cert_pem());
    let root = std::env::temp_dir().join(format!("todo-test-pg-tls-{}", uuid::Uuid::new_v4().simple()));
    let binaries = find_binaries().unwrap_or_else(|e| panic!("{e}"));
    let tls = ServerTls { cert_pem: pg_cert.cert_pem, key_pem: pg_cert.key_pem };
    let pg = PrivatePostgres::start_with_tls(binaries, &root, Durability::Throwaway, true, Some(&tls))
        .unwrap_or_else(|e| panic!("starting PostgreSQL with ssl=on: {e}"));

    // The service's own pool, from DATABASE_URL as an operator would write it.
    let url = verify_full_url(&pg, &ca_file);
    let env: &[(&str, &str)] = &[("DATABASE_URL", &url)];
    let config = DbConfig::from_env(&env).expect("a verify-full URL is a valid DATABASE_URL");
    let server = testkit::spawn_auth(testkit::auth_config_with(config.clone())).await;
    let mut auth = AuthServiceClient::new(testkit::channel(server.addr).await);
    auth.sign_up(sign_up("pg-tls@example.com")).await.expect("migrations and the call went over verified TLS");
    let pool = todo_shared::database::pool(&config).unwrap();
    let ssl: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&pool).await.unwrap();
    assert!(ssl, "the connection is encrypted");
    server.stop().await.unwrap();

    // A server certificate the client's CA did not sign is refused: the pool does not connect.
    let wrong = db_config(verify_full_url(&pg, &other_ca_file), false);
    let err = sqlx::query("SELECT 1").execute(&todo_shared::database::pool(&wrong).unwrap()).await.unwrap_err();
    // rustls's verdict, as sqlx reports it (an I/O error of the TLS handshake).
    assert!(format!("{err:?}").contains("InvalidCertificate(UnknownIssuer)"), "{err:?}");
    // auth-service waits for a database it can use (as for one that is not up yet): it serves
    // nothing but UNAVAILABLE meanwhile.
    let server = testkit::spawn_auth(testkit::auth_config_with(wrong)).await;
    let mut auth = AuthServiceClient::new(testkit::channel(server.addr).await);
    let status = auth.sign_up(sign_up("never@example.com")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    server.stop().await.unwrap();
    drop(pg);
}

/// Runs `auth-service healthcheck` against `addr` with `env` and returns whether it exited 0.
async fn healthcheck(addr: std::net::SocketAddr, env: &[(&str, &std::path::Path)]) -> bool {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_auth-service"));
    command.arg("healthcheck").env("AUTH_ADDR", addr.to_string());
    for var in ["TLS_CERT_FILE", "TLS_KEY_FILE", "HEALTHCHECK_CA_FILE", "HEALTHCHECK_TLS_NAME"] {
        command.env_remove(var);
    }
    for (var, value) in env {
        command.env(var, value);
    }
    command.stderr(std::process::Stdio::null()).status().await.expect("running the binary").success()
}

#[tokio::test]
async fn the_healthcheck_subcommand_checks_a_tls_server() {
    let ca = TestCa::new("todo test CA");
    let files = TempDir::new();
    let server_cert = ca.server_cert(&["localhost"]);
    // The certificate file ends with its CA, so the check trusts it with no other setting.
    let cert = files.write("server.pem", &format!("{}{}", server_cert.cert_pem, ca.cert_pem()));
    let key = files.write("server.key", &server_cert.key_pem);
    let other_ca = files.write("other-ca.pem", &TestCa::new("another CA").cert_pem());
    let db = TestDatabase::new().await;
    let mut config = testkit::auth_config(&db);
    config.endpoint.tls = Some(TlsFiles { cert: cert.clone(), key: key.clone() });
    let server = testkit::spawn_auth(config).await;

    let env = [("TLS_CERT_FILE", cert.as_path()), ("TLS_KEY_FILE", key.as_path())];
    let mut serving = false;
    for _ in 0..50 {
        if healthcheck(server.addr, &env).await {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(serving, "healthcheck over TLS never succeeded");
    assert!(!healthcheck(server.addr, &[]).await, "a plaintext check of a TLS server fails");
    let untrusted = [env[0], env[1], ("HEALTHCHECK_CA_FILE", other_ca.as_path())];
    assert!(!healthcheck(server.addr, &untrusted).await, "a check trusting another CA fails");
}
