//! `/metrics` of task-service: calls refused before the handler (no token) are counted too,
//! streams carry their grpc_type and are handled when they end, and paths the server does not
//! serve share one series.

use testkit::scrape::{free_local_addr, scrape, wait_until_up};
use testkit::test_database::TestDatabase;
use testkit::{authed, spawn_auth, spawn_task};
use todo_proto::auth::v1::GetJwksRequest;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, GetTaskRequest};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// auth-service, and task-service serving `/metrics` at the returned address, on `db`.
async fn servers_with_metrics(
    db: &TestDatabase,
) -> (testkit::RunningServer, testkit::RunningServer, std::net::SocketAddr) {
    let metrics_addr = free_local_addr();
    let mut config = testkit::task_config(db);
    config.endpoint.metrics_addr = Some(metrics_addr);
    let auth_server = spawn_auth(testkit::auth_config(db)).await;
    let task_server = spawn_task(config).await;
    (auth_server, task_server, metrics_addr)
}

#[tokio::test]
async fn task_calls_are_counted_by_method_and_code() {
    let db = TestDatabase::new().await;
    let (auth_server, task_server, metrics_addr) = servers_with_metrics(&db).await;
    let task_channel = testkit::channel(task_server.addr).await;
    let mut tasks = TaskServiceClient::new(task_channel.clone());
    wait_until_up(metrics_addr).await;
    let before = scrape(metrics_addr).await;

    let token = testkit::access_token(auth_server.addr, "t@example.com").await;
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

/// The database series the design's monitoring asks for, after real calls: each statement's
/// duration by name and outcome, the wait for a pooled connection, and the tables' sizes, row
/// estimates and the feed's tombstones.
#[tokio::test]
async fn database_series_after_real_calls() {
    use todo_proto::task::v1::{DeleteTaskRequest, ListTasksRequest};
    let db = TestDatabase::new().await;
    let (auth_server, task_server, metrics_addr) = servers_with_metrics(&db).await;
    let mut tasks = TaskServiceClient::new(testkit::channel(task_server.addr).await);
    wait_until_up(metrics_addr).await;
    let statements = |m: &testkit::scrape::Metrics, statement: &str| {
        m.count("db_statement_duration_seconds_count", &[("statement", statement), ("outcome", "ok")])
    };
    // No scrape before the calls: the first scrape takes the storage reading. The statement
    // series are process-wide (other tests' calls count too), so at least this test's calls are
    // asserted.

    let token = testkit::access_token(auth_server.addr, "db@example.com").await;
    let mut ids = Vec::new();
    for title in ["one", "two", "three"] {
        let created = tasks
            .create_task(authed(CreateTaskRequest { title: title.into(), ..Default::default() }, &token))
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        ids.push(created.id);
    }
    tasks.get_task(authed(GetTaskRequest { id: ids[0] }, &token)).await.unwrap();
    tasks.list_tasks(authed(ListTasksRequest::default(), &token)).await.unwrap();
    tasks.delete_task(authed(DeleteTaskRequest { id: ids[2], ..Default::default() }, &token)).await.unwrap();
    sqlx::query("ANALYZE tasks").execute(&db.pool).await.unwrap();

    let after = scrape(metrics_addr).await;
    for (statement, calls) in [("insert_task", 3.0), ("get_task", 1.0), ("list_tasks", 1.0), ("delete_task", 1.0)] {
        assert!(statements(&after, statement) >= calls, "{statement} counted {calls} times:\n{}", after.0);
    }
    assert!(after.0.contains("db_statement_duration_seconds_bucket{"), "a histogram, with buckets");
    assert!(after.count("db_pool_acquire_seconds_count", &[]) >= 6.0, "every statement waited for a connection");
    assert_eq!(after.value("db_pool_acquire_timeouts_total", &[]), Some(0.0), "no wait ran out");
    let size =
        |relation: &str, kind: &str| after.count("db_relation_size_bytes", &[("relation", relation), ("kind", kind)]);
    assert!(size("tasks", "table") >= 8192.0, "the tasks table takes a page at least:\n{}", after.0);
    assert!(size("idx_tasks_user_created_id", "index") >= 8192.0, "its keyset index too");
    assert_eq!(after.value("db_relation_rows_estimate", &[("relation", "tasks")]), Some(2.0), "two tasks, analyzed");
    assert_eq!(after.value("db_feed_tombstones", &[]), Some(1.0), "the deleted task's tombstone awaits pruning");
    // The reading was taken for this scrape; the next scrape, within the minute, reuses it.
    sqlx::query("DELETE FROM task_tombstones").execute(&db.pool).await.unwrap();
    let again = scrape(metrics_addr).await;
    assert_eq!(again.value("db_feed_tombstones", &[]), Some(1.0), "not read again within a minute");
}
