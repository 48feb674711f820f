use testkit::TestApp;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn wait_for_status(channel: tonic::transport::Channel, service: &str, want: ServingStatus) {
    let mut health = HealthClient::new(channel);
    // Bounded: the probe runs once a second.
    for _ in 0..50 {
        if let Ok(r) = health.check(HealthCheckRequest { service: service.into() }).await
            && r.into_inner().status == want as i32
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{service:?} never became {want:?}");
}

#[tokio::test]
async fn health_is_serving_for_the_server_and_the_named_services() {
    let app = TestApp::spawn().await;
    for service in ["", "todo.auth.v1.AuthService"] {
        wait_for_status(testkit::channel(app.auth_server.addr).await, service, ServingStatus::Serving).await;
    }
    for service in ["", "todo.task.v1.TaskService"] {
        wait_for_status(testkit::channel(app.task_server.addr).await, service, ServingStatus::Serving).await;
    }
    let err = HealthClient::new(testkit::channel(app.auth_server.addr).await)
        .check(HealthCheckRequest { service: "no.such.Service".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // Watch on that name, as the health checking protocol says: SERVICE_UNKNOWN, and the stream
    // stays open (the name may be registered later; shared/tests/health_watch.rs shows that).
    for addr in [app.auth_server.addr, app.task_server.addr] {
        let mut watch = HealthClient::new(testkit::channel(addr).await)
            .watch(HealthCheckRequest { service: "no.such.Service".into() })
            .await
            .expect("Watch on an unknown name is not refused")
            .into_inner();
        let first = watch.message().await.unwrap().expect("a first status");
        assert_eq!(first.status(), ServingStatus::ServiceUnknown);
        let next = tokio::time::timeout(std::time::Duration::from_millis(1500), watch.message()).await;
        assert!(next.is_err(), "the stream stays open and quiet: {next:?}");
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_describe_both_services() {
    use tonic_reflection::pb::{v1, v1alpha};
    let app = TestApp::spawn().await;
    let channel = testkit::channel(app.auth_server.addr).await;

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut stream = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = response.message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in ["todo.auth.v1.AuthService", "grpc.health.v1.Health"] {
        assert!(names.contains(&name.to_string()), "{names:?}");
    }

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "todo.task.v1.TaskService".into(),
        )),
    };
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut stream = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = stream.message().await.unwrap().unwrap();
    assert!(matches!(
        response.message_response,
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_and_returns_cleanly() {
    let db = testkit::test_database::TestDatabase::new().await;
    let server = testkit::spawn_auth(testkit::auth_config(&db)).await;
    let channel = testkit::channel(server.addr).await;
    wait_for_status(channel.clone(), "", ServingStatus::Serving).await;
    let mut watch =
        HealthClient::new(channel).watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    let stopped = tokio::spawn(server.stop());
    // The watcher sees NOT_SERVING before the stream ends.
    let mut saw_not_serving = false;
    while let Ok(Some(update)) = watch.message().await {
        if update.status == ServingStatus::NotServing as i32 {
            saw_not_serving = true;
            break;
        }
    }
    assert!(saw_not_serving);
    stopped.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_graceful_stop_finishes_calls_in_flight_and_does_not_wait_for_idle_clients() {
    use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
    use todo_proto::auth::v1::{LoginRequest, SignUpRequest};
    let db = testkit::test_database::TestDatabase::new().await;
    let mut config = testkit::auth_config(&db);
    config.bcrypt_cost = 12; // a login takes a few hundred milliseconds
    config.drain_timeout = std::time::Duration::from_secs(10);
    let server = testkit::spawn_auth(config).await;
    let mut auth = AuthServiceClient::new(testkit::channel(server.addr).await);
    auth.sign_up(SignUpRequest { email: "drain@example.com".into(), password: testkit::PASSWORD.into() })
        .await
        .unwrap();

    // A second client with a connection of its own, connected and idle through the stop.
    let mut idle = AuthServiceClient::new(testkit::channel(server.addr).await);
    idle.get_jwks(todo_proto::auth::v1::GetJwksRequest {}).await.unwrap();

    let mut in_flight = auth.clone();
    let login = tokio::spawn(async move {
        in_flight.login(LoginRequest { email: "drain@example.com".into(), password: testkit::PASSWORD.into() }).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let start = std::time::Instant::now();
    server.stop().await.unwrap();
    let took = start.elapsed();
    assert!(login.await.unwrap().is_ok(), "the call in flight was answered");
    // `idle` still holds its connection: the stop did not wait for it.
    assert!(took < std::time::Duration::from_secs(3), "stop took {took:?} with a 10 s drain");
    drop((auth, idle));
}

#[tokio::test]
async fn a_request_id_comes_back_in_the_response_metadata() {
    use todo_proto::auth::v1::GetJwksRequest;
    let app = TestApp::spawn().await;
    let mut request = tonic::Request::new(GetJwksRequest {});
    request.metadata_mut().insert("x-request-id", "client-chosen-42".parse().unwrap());
    let response = app.auth.clone().get_jwks(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "client-chosen-42");

    // Without one (or with one unfit to log), the server makes one, on errors too.
    let err = app.auth.clone().get_current_user(todo_proto::auth::v1::GetCurrentUserRequest {}).await.unwrap_err();
    let made = err.metadata().get("x-request-id").expect("a request id on an error").to_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&made).is_ok(), "{made}");
}

#[tokio::test]
async fn the_drain_time_bounds_a_stop_that_a_client_holds_open() {
    // A health Watch never ends by itself: the stop waits for it only SHUTDOWN_DRAIN_SECONDS.
    let db = testkit::test_database::TestDatabase::new().await;
    let mut config = testkit::auth_config(&db);
    config.drain_timeout = std::time::Duration::from_secs(1);
    let server = testkit::spawn_auth(config).await;
    let channel = testkit::channel(server.addr).await;
    wait_for_status(channel.clone(), "", ServingStatus::Serving).await;
    let mut watch =
        HealthClient::new(channel).watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    watch.message().await.unwrap().expect("the first status");
    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), server.stop()).await;
    let took = started.elapsed();
    stopped.expect("the stop ends within the drain time, however long the client holds on").unwrap();
    assert!(took >= std::time::Duration::from_millis(900), "it did wait for the open call: {took:?}");
    assert!(took < std::time::Duration::from_millis(2500), "a 1 s drain took {took:?}");
    drop(watch);
}

#[tokio::test]
async fn a_migration_that_fails_stops_the_service_with_the_cause() {
    // Unlike a late database, which it waits for, a migration that fails is not retried.
    let db = testkit::test_database::TestDatabase::empty().await;
    // A table in the way, of another shape, so the first migration cannot create its own.
    sqlx::raw_sql("CREATE TABLE users (id int)").execute(&db.pool).await.unwrap();
    let config =
        testkit::auth_config_with(todo_shared::database::DbConfig { run_migrations: true, ..testkit::db_config(&db) });
    let server = testkit::spawn_auth(config).await;
    let err = tokio::time::timeout(std::time::Duration::from_secs(20), server.wait())
        .await
        .expect("serve() returns by itself")
        .unwrap_err();
    assert!(format!("{err:#}").contains("already exists"), "the cause is given: {err:#}");
}
