//! Per-user limits: one account flooding a server gets RESOURCE_EXHAUSTED QUOTA_EXCEEDED while
//! other users are served as usual.

use crate::sync::user;
use std::num::NonZeroU32;
use std::time::Duration;
use testkit::{TestApp, assert_error, authed, channel, spawn_task, task_config};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::*;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn a_user_over_the_call_rate_is_told_when_to_come_back_and_others_are_served() {
    let app = TestApp::spawn().await;
    let mut config = task_config(&app.db);
    config.call_rate.per_second = NonZeroU32::new(5).unwrap();
    config.call_rate.burst = NonZeroU32::new(10).unwrap();
    let server = spawn_task(config).await;
    let client = TaskServiceClient::new(channel(server.addr).await);
    let (alice, bob) = (user(&app, "alice@example.com").await, user(&app, "bob@example.com").await);
    let list = |token: String| {
        let mut client = client.clone();
        async move { client.list_tasks(authed(ListTasksRequest::default(), &token)).await }
    };
    let mut refused = None;
    let mut accepted = 0;
    for _ in 0..30 {
        match list(alice.token.clone()).await {
            Ok(_) => accepted += 1,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("30 calls at once are over a burst of 10");
    assert!((10..=15).contains(&accepted), "the burst of 10 (and what 5/s adds meanwhile) was served: {accepted}");
    assert_error(&refused, Code::ResourceExhausted, "QUOTA_EXCEEDED");
    let quota = refused.get_details_quota_failure().expect("a QuotaFailure");
    assert_eq!(quota.violations[0].subject, format!("user:{}", alice.id));
    assert!(quota.violations[0].description.contains("USER_CALLS_PER_SECOND"), "{quota:?}");
    let retry = refused.get_details_retry_info().and_then(|r| r.retry_delay).expect("a RetryInfo");
    assert!(retry > Duration::ZERO && retry <= Duration::from_millis(200), "one call's worth at 5/s: {retry:?}");
    // Another user is served meanwhile, and alice is again once the delay has passed.
    list(bob.token.clone()).await.expect("bob is not limited by alice's calls");
    tokio::time::sleep(retry).await;
    list(alice.token.clone()).await.expect("alice after the RetryInfo delay");
}

#[tokio::test]
async fn a_user_has_at_most_max_tasks_per_user_and_others_are_not_affected() {
    let app = TestApp::spawn().await;
    let mut config = task_config(&app.db);
    config.max_tasks_per_user = 3;
    let server = spawn_task(config).await;
    let client = TaskServiceClient::new(channel(server.addr).await);
    let (alice, bob) = (user(&app, "alice@example.com").await, user(&app, "bob@example.com").await);
    let create = |token: String, title: &str, request_id: &str| {
        let mut client = client.clone();
        let request = CreateTaskRequest { title: title.into(), request_id: request_id.into(), ..Default::default() };
        async move { client.create_task(authed(request, &token)).await.map(|r| r.into_inner().task.unwrap()) }
    };
    let first = create(alice.token.clone(), "one", "").await.unwrap();
    create(alice.token.clone(), "two", "").await.unwrap();
    create(alice.token.clone(), "three", "req-3").await.unwrap();
    for request_id in ["", "req-4"] {
        let refused =
            create(alice.token.clone(), "four", request_id).await.expect_err("a fourth task is over the limit");
        assert_error(&refused, Code::ResourceExhausted, "QUOTA_EXCEEDED");
        let quota = refused.get_details_quota_failure().expect("a QuotaFailure");
        assert_eq!(quota.violations[0].subject, format!("user:{}", alice.id));
        assert!(quota.violations[0].description.contains("MAX_TASKS_PER_USER"), "{quota:?}");
    }
    let (tasks, requests): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tasks WHERE user_id = $1), (SELECT count(*) FROM task_create_requests WHERE user_id = $1)",
    )
    .bind(alice.id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!((tasks, requests), (3, 1), "nothing written for the refused creates");
    // A repeat of a request that succeeded still answers with its task; bob is not limited.
    assert_eq!(create(alice.token.clone(), "three", "req-3").await.unwrap().title, "three");
    create(bob.token.clone(), "bob's", "").await.expect("another user");
    // Deleting one frees a place.
    let mut tasks_client = client.clone();
    tasks_client
        .delete_task(authed(DeleteTaskRequest { id: first.id, ..Default::default() }, &alice.token))
        .await
        .unwrap();
    create(alice.token.clone(), "four", "").await.expect("a place was freed");
}
