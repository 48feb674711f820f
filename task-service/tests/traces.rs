//! Traces (OpenTelemetry over OTLP): a caller's W3C `traceparent` continues through the real
//! task-service binary's spans, exported to a collector the test starts (`testkit::otlp`). One
//! ListTasks call makes the server span, a child of the caller's span, and one child span per
//! SQL statement, named after the statement, with its row count and never a value.

use std::time::Duration;
use testkit::otlp::Collector;
use testkit::process::{ServiceProcess, free_addr, lazy_channel, until_serving};
use testkit::test_database::TestDatabase;
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, ListTasksRequest};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";
const SERVER_SPAN: &str = "todo.task.v1.TaskService/ListTasks";

fn bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

#[tokio::test]
async fn a_callers_traceparent_continues_through_list_tasks_and_its_statement() {
    let collector = Collector::start().await;
    let db = TestDatabase::new().await;
    let auth = testkit::spawn_auth(testkit::auth_config(&db)).await;
    let addr = free_addr();
    let endpoint = collector.endpoint();
    let server = ServiceProcess::start(
        env!("CARGO_BIN_EXE_task-service"),
        "TASK_ADDR",
        addr,
        &db,
        &[
            ("RUN_MIGRATIONS", "false"),
            ("SHUTDOWN_DRAIN_SECONDS", "1"),
            ("RUST_LOG", "info"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            // Export every 100 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    until_serving(addr).await;
    let email = "traced@example.com";
    let token = testkit::access_token(auth.addr, email).await;
    let mut tasks = TaskServiceClient::new(lazy_channel(addr));
    let title = "a title that must not reach the traces";
    tasks
        .create_task(testkit::authed(CreateTaskRequest { title: title.into(), ..Default::default() }, &token))
        .await
        .unwrap();

    let mut request = testkit::authed(ListTasksRequest::default(), &token);
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01");
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    let listed = tasks.list_tasks(request).await.unwrap().into_inner();
    assert_eq!(listed.tasks.len(), 1);

    let trace_id = bytes(TRACE_ID);
    collector
        .wait_for_trace(&trace_id, Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.name == SERVER_SPAN) && spans.iter().any(|s| s.name == "list_tasks")
        })
        .await;
    // Let a straggler arrive (a statement exported in a later batch) before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans: Vec<_> = collector.spans().into_iter().filter(|s| s.trace_id == trace_id).collect();
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["list_tasks", SERVER_SPAN], "the call's spans, and only them: {spans:#?}");

    let call = spans.iter().find(|s| s.name == SERVER_SPAN).unwrap();
    assert_eq!(call.parent_span_id, bytes(CALLER_SPAN_ID), "the server span continues the caller's span");
    assert_eq!(call.service_name, "task-service");
    assert_eq!(call.attribute("rpc.system"), Some("grpc"));
    assert_eq!(call.attribute("rpc.grpc.status_code"), Some("0"));
    let statement = spans.iter().find(|s| s.name == "list_tasks").unwrap();
    assert_eq!(statement.parent_span_id, call.span_id, "the statement is a child of the call");
    assert_eq!(statement.attribute("db.system.name"), Some("postgresql"));
    assert_eq!(statement.attribute("db.response.returned_rows"), Some("1"));

    // Nothing a user sent or owns is in any exported span.
    for span in collector.spans() {
        for (key, value) in &span.attributes {
            for secret in [title, token.as_str(), email, testkit::PASSWORD] {
                assert!(!value.contains(secret), "span {} attribute {key} holds a value: {value}", span.name);
            }
        }
    }
    // A call without a traceparent starts a trace of its own.
    let untraced = collector.spans().into_iter().find(|s| s.name == "todo.task.v1.TaskService/CreateTask");
    let untraced = untraced.expect("the CreateTask call was exported too");
    assert!(untraced.parent_span_id.is_empty(), "no caller span: a root span");
    assert_ne!(untraced.trace_id, trace_id);
    server.terminate(Duration::from_secs(10)).expect("the server stops on SIGTERM");
}
