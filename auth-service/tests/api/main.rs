//! auth-service end to end: the real server on port 0 over a fresh database, called through the
//! generated client, asserting codes, ErrorInfo reasons and what is in the database.

mod account;
mod connections;
mod grpc_web;
mod login;
mod metrics;
mod refresh;
mod security;
mod server;
mod sessions;
mod sign_up;
mod tls;
mod tokens;

/// Waits (up to 2 s) until task-service refuses `access_token` as revoked (SESSION_REVOKED).
async fn refused_by_task_service(app: &testkit::TestApp, access_token: &str) {
    use std::time::{Duration, Instant};
    let started = Instant::now();
    loop {
        let list = testkit::authed(todo_proto::task::v1::ListTasksRequest::default(), access_token);
        match app.tasks.clone().list_tasks(list).await {
            Err(status) => return testkit::assert_error(&status, tonic::Code::Unauthenticated, "SESSION_REVOKED"),
            Ok(_) => assert!(started.elapsed() < Duration::from_secs(2), "still accepted after 2 s"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
