//! `/metrics` on METRICS_ADDR: the go-grpc-prometheus series move with real calls, the pool and
//! bcrypt queue gauges are there. Each server has its own registry, so the counts are this
//! test's alone; the assertions still compare before and after.

use testkit::scrape::{free_local_addr, get, scrape, wait_until_up};
use testkit::test_database::TestDatabase;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{LoginRequest, SignUpRequest};
use tonic::Code;

#[tokio::test]
async fn calls_move_the_grpc_series_and_the_gauges_are_there() {
    let db = TestDatabase::new().await;
    let metrics_addr = free_local_addr();
    let mut config = testkit::auth_config(&db);
    config.endpoint.metrics_addr = Some(metrics_addr);
    let server = testkit::spawn_auth(config).await;
    let mut auth = AuthServiceClient::new(testkit::channel(server.addr).await);
    wait_until_up(metrics_addr).await;

    let login = [("grpc_service", "todo.auth.v1.AuthService"), ("grpc_method", "Login"), ("grpc_type", "unary")];
    let sign_up = [("grpc_service", "todo.auth.v1.AuthService"), ("grpc_method", "SignUp")];
    let with_code = |labels: &[(&'static str, &'static str)], code: &'static str| {
        let mut labels = labels.to_vec();
        labels.push(("grpc_code", code));
        labels
    };
    let before = scrape(metrics_addr).await;

    auth.sign_up(SignUpRequest { email: "m@example.com".into(), password: testkit::PASSWORD.into() }).await.unwrap();
    for _ in 0..2 {
        auth.login(LoginRequest { email: "m@example.com".into(), password: testkit::PASSWORD.into() }).await.unwrap();
    }
    let err = auth
        .login(LoginRequest { email: "m@example.com".into(), password: "not the password".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = auth.sign_up(SignUpRequest { email: "not an email".into(), password: "short".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let after = scrape(metrics_addr).await;
    let moved = |name: &str, labels: &[(&str, &str)]| after.count(name, labels) - before.count(name, labels);
    assert_eq!(moved("grpc_server_started_total", &login), 3.0, "{}", after.0);
    assert_eq!(moved("grpc_server_handled_total", &with_code(&login, "OK")), 2.0, "{}", after.0);
    assert_eq!(moved("grpc_server_handled_total", &with_code(&login, "Unauthenticated")), 1.0, "{}", after.0);
    assert_eq!(moved("grpc_server_handled_total", &with_code(&sign_up, "OK")), 1.0, "{}", after.0);
    assert_eq!(moved("grpc_server_handled_total", &with_code(&sign_up, "InvalidArgument")), 1.0, "{}", after.0);
    assert_eq!(moved("grpc_server_handling_seconds_count", &login), 3.0, "{}", after.0);
    assert_eq!(moved("grpc_server_handling_seconds_count", &sign_up), 2.0, "{}", after.0);
    assert!(after.count("grpc_server_handling_seconds_sum", &login) > 0.0);
    // Every call is at most 10 s, so all of them are in the last finite bucket.
    assert_eq!(
        after.count("grpc_server_handling_seconds_bucket", &[("grpc_method", "Login"), ("le", "10.0")]),
        after.count("grpc_server_handling_seconds_count", &login)
    );

    // The pool (testkit's DB_MAX_CONNECTIONS is 5) has served these calls and is at rest.
    assert_eq!(after.value("db_pool_max_connections", &[]), Some(5.0), "{}", after.0);
    let idle = after.value("db_pool_connections", &[("state", "idle")]).expect("idle gauge");
    let in_use = after.value("db_pool_connections", &[("state", "in_use")]).expect("in_use gauge");
    assert!(idle >= 0.0 && in_use >= 0.0 && idle + in_use >= 1.0 && idle + in_use <= 5.0, "{idle} {in_use}");
    // Nothing is waiting for a bcrypt slot now; the capacity is 8 per core.
    assert_eq!(after.value("auth_password_hash_queue_depth", &[]), Some(0.0), "{}", after.0);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) as f64;
    assert_eq!(after.value("auth_password_hash_queue_capacity", &[]), Some(8.0 * cores), "8 waiting per core");
    assert!(after.value("auth_password_hash_in_progress", &[]).is_some());

    let (status, _, _) = get(metrics_addr, "/other").await;
    assert_eq!(status, 404);
    server.stop().await.unwrap();
    assert!(tokio::net::TcpStream::connect(metrics_addr).await.is_err(), "the endpoint stops with the server");
}
