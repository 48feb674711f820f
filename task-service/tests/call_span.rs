//! Every line logged during a call carries the call's request id (and method, and the user once
//! the token is verified), even one written deep in the database error path: an operator can tie
//! any log line to the call that caused it.
//!
//! A test binary of its own: it installs the process-wide subscriber (`testkit::logs`).

use testkit::authed;
use todo_proto::task::v1::CreateTaskRequest;

#[tokio::test]
async fn a_database_error_inside_a_call_is_logged_with_the_calls_request_id() {
    let logs = testkit::logs::capture(tracing::Level::INFO);
    let app = testkit::TestApp::spawn().await;
    let (user, tokens) = app.sign_up("traced@example.com").await;
    // The table the call writes to is gone: the store fails with an error that is not an outage.
    sqlx::raw_sql("ALTER TABLE tasks RENAME TO tasks_elsewhere").execute(&app.db.pool).await.unwrap();
    let mut request = authed(CreateTaskRequest { title: "lost".into(), ..Default::default() }, &tokens.access_token);
    request.metadata_mut().insert("x-request-id", "trace-me-7f3a".parse().unwrap());
    let err = app.tasks.clone().create_task(request).await.unwrap_err();
    testkit::assert_error(&err, tonic::Code::Internal, "INTERNAL");

    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("database error"))
        .unwrap_or_else(|| panic!("the database error is logged:\n{text}"));
    assert!(line.contains("request_id=trace-me-7f3a"), "the request id is on the line: {line}");
    assert!(line.contains("method=/todo.task.v1.TaskService/CreateTask"), "the method is on the line: {line}");
    assert!(line.contains(&format!("user_id={}", user.id)), "the verified user is on the line: {line}");
}
