//! `/metrics` of task-service: calls refused before the handler (no token) are counted too,
//! streams carry their grpc_type and are handled when they end, and paths the server does not
//! serve share one series.

use testkit::scrape::{free_local_addr, scrape, wait_until_up};
use testkit::test_database::TestDatabase;
use testkit::{authed, spawn_auth, spawn_task};
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{GetJwksRequest, SignUpRequest};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, GetTaskRequest};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn task_calls_are_counted_by_method_and_code() {
    let db = TestDatabase::new().await;
    let metrics_addr = free_local_addr();
    let mut config = testkit::task_config(&db);
    config.endpoint.metrics_addr = Some(metrics_addr);
    let auth_server = spawn_auth(testkit::auth_config(&db)).await;
    let task_server = spawn_task(config).await;
    let task_channel = testkit::channel(task_server.addr).await;
    let mut tasks = TaskServiceClient::new(task_channel.clone());
    wait_until_up(metrics_addr).await;
    let before = scrape(metrics_addr).await;

    let token = AuthServiceClient::new(testkit::channel(auth_server.addr).await)
        .sign_up(SignUpRequest { email: "t@example.com".into(), password: testkit::PASSWORD.into() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token;
    tasks.create_task(authed(CreateTaskRequest { title: "one".into(), ..Default::default() }, &token)).await.unwrap();
    let err = tasks.create_task(authed(CreateTaskRequest::default(), &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = tasks.get_task(GetTaskRequest { id: 1 }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    HealthClient::new(task_channel.clone()).check(HealthCheckRequest { service: String::new() }).await.unwrap();
    let mut watch_stream = HealthClient::new(task_channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    watch_stream.message().await.unwrap();
    // An AuthService method asked of task-service: UNIMPLEMENTED, counted as "unknown".
    let err = AuthServiceClient::new(task_channel).get_jwks(GetJwksRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    let after = scrape(metrics_addr).await;
    let moved = |name: &str, labels: &[(&str, &str)]| after.count(name, labels) - before.count(name, labels);
    let service = ("grpc_service", "todo.task.v1.TaskService");
    let handled = "grpc_server_handled_total";
    let create = [service, ("grpc_method", "CreateTask"), ("grpc_type", "unary")];
    assert_eq!(moved(handled, &[&create[..], &[("grpc_code", "OK")]].concat()), 1.0, "{}", after.0);
    assert_eq!(moved(handled, &[&create[..], &[("grpc_code", "InvalidArgument")]].concat()), 1.0, "{}", after.0);
    let get = [service, ("grpc_method", "GetTask"), ("grpc_code", "Unauthenticated")];
    assert_eq!(moved(handled, &get), 1.0, "{}", after.0);
    assert_eq!(moved("grpc_server_handling_seconds_count", &create), 2.0, "{}", after.0);
    let check = [("grpc_service", "grpc.health.v1.Health"), ("grpc_method", "Check"), ("grpc_code", "OK")];
    assert_eq!(moved(handled, &check), 1.0, "{}", after.0);
    let watch = [("grpc_method", "Watch"), ("grpc_type", "server_stream")];
    assert_eq!(moved("grpc_server_started_total", &watch), 1.0, "{}", after.0);
    assert_eq!(moved("grpc_server_handling_seconds_count", &watch), 0.0, "a stream still open is not handled yet");
    let unknown = [("grpc_service", "unknown"), ("grpc_method", "unknown"), ("grpc_code", "Unimplemented")];
    assert_eq!(moved(handled, &unknown), 1.0, "{}", after.0);
    assert!(!after.0.contains("AuthService"), "task-service lists only what it serves");
    assert!(!after.0.contains("auth_password_hash"), "the bcrypt gauges are auth-service's");
    assert_eq!(after.value("db_pool_max_connections", &[]), Some(5.0));
    assert!(after.value("db_pool_connections", &[("state", "idle")]).is_some());

    // The client drops the stream: it is handled, as Canceled, with its whole duration.
    drop(watch_stream);
    let canceled = [("grpc_method", "Watch"), ("grpc_type", "server_stream"), ("grpc_code", "Canceled")];
    let mut last = scrape(metrics_addr).await;
    for _ in 0..50 {
        if last.count(handled, &canceled) == 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        last = scrape(metrics_addr).await;
    }
    assert_eq!(last.count(handled, &canceled), 1.0, "{}", last.0);
    assert_eq!(last.count("grpc_server_handling_seconds_count", &watch), 1.0);
}
