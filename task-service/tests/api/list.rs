use testkit::{TestApp, assert_error, authed, bad_fields};
use todo_proto::task::v1::*;
use tonic::Code;

async fn seed(app: &TestApp, token: &str, n: usize) -> Vec<Task> {
    let mut out = Vec::new();
    for i in 0..n {
        let task = app
            .tasks
            .clone()
            .create_task(authed(CreateTaskRequest { title: format!("task {i}"), ..Default::default() }, token))
            .await
            .unwrap()
            .into_inner()
            .task
            .unwrap();
        out.push(task);
    }
    out
}

async fn list(app: &TestApp, token: &str, request: ListTasksRequest) -> Result<ListTasksResponse, tonic::Status> {
    app.tasks.clone().list_tasks(authed(request, token)).await.map(|r| r.into_inner())
}

/// Follows next_page_token to the end.
async fn all_pages(app: &TestApp, token: &str, mut request: ListTasksRequest) -> (Vec<Task>, usize) {
    let mut tasks = Vec::new();
    let mut pages = 0;
    loop {
        let page = list(app, token, request.clone()).await.unwrap();
        pages += 1;
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return (tasks, pages);
        }
        assert!(pages < 100, "pagination must end");
        request.page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn pages_cover_every_task_once_in_each_order() {
    let app = TestApp::spawn().await;
    let (_, tokens) = app.sign_up("alice@example.com").await;
    let token = tokens.access_token;
    let created = seed(&app, &token, 23).await;
    // Make update order differ from creation order.
    for t in created.iter().step_by(3) {
        app.tasks
            .clone()
            .update_task(authed(UpdateTaskRequest { id: t.id, completed: Some(true), ..Default::default() }, &token))
            .await
            .unwrap();
    }
    let ids = |tasks: &[Task]| tasks.iter().map(|t| t.id).collect::<Vec<_>>();
    let mut by_creation = ids(&created);

    let (desc, pages) = all_pages(&app, &token, ListTasksRequest { page_size: 5, ..Default::default() }).await;
    assert_eq!(pages, 5);
    by_creation.reverse();
    assert_eq!(ids(&desc), by_creation, "default order is create_time desc");
    by_creation.reverse();

    let (asc, _) = all_pages(
        &app,
        &token,
        ListTasksRequest { page_size: 4, order_by: "create_time".into(), ..Default::default() },
    )
    .await;
    assert_eq!(ids(&asc), by_creation);

    for order in ["update_time", "update_time desc"] {
        let (tasks, _) =
            all_pages(&app, &token, ListTasksRequest { page_size: 6, order_by: order.into(), ..Default::default() })
                .await;
        let mut keys: Vec<_> = tasks
            .iter()
            .map(|t| {
                let u = t.update_time.unwrap();
                (u.seconds, u.nanos, t.id)
            })
            .collect();
        assert_eq!(keys.len(), 23);
        let mut sorted = keys.clone();
        sorted.sort();
        if order.ends_with("desc") {
            sorted.reverse();
        }
        assert_eq!(keys, sorted, "{order}");
        keys.dedup();
        assert_eq!(keys.len(), 23);
    }

    let (done, _) =
        all_pages(&app, &token, ListTasksRequest { page_size: 3, completed: Some(true), ..Default::default() }).await;
    assert_eq!(done.len(), 8);
    assert!(done.iter().all(|t| t.completed));
    let (open, _) =
        all_pages(&app, &token, ListTasksRequest { page_size: 3, completed: Some(false), ..Default::default() }).await;
    assert_eq!(open.len(), 15);
}

#[tokio::test]
async fn a_page_boundary_survives_inserts_and_deletes() {
    let app = TestApp::spawn().await;
    let (_, tokens) = app.sign_up("alice@example.com").await;
    let token = tokens.access_token;
    let created = seed(&app, &token, 10).await;
    let first =
        list(&app, &token, ListTasksRequest { page_size: 4, order_by: "create_time".into(), ..Default::default() })
            .await
            .unwrap();
    // Delete a task already seen and add new ones: the next page starts right after the cursor.
    app.tasks
        .clone()
        .delete_task(authed(DeleteTaskRequest { id: created[0].id, etag: String::new() }, &token))
        .await
        .unwrap();
    seed(&app, &token, 2).await;
    let second = list(
        &app,
        &token,
        ListTasksRequest {
            page_size: 4,
            order_by: "create_time".into(),
            page_token: first.next_page_token,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        second.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        created[4..8].iter().map(|t| t.id).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn page_size_rules() {
    let app = TestApp::spawn().await;
    let (_, tokens) = app.sign_up("alice@example.com").await;
    let token = tokens.access_token;
    // 1002 rows by SQL: the contract's defaults are about counts, not speed of seeding.
    let user_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users").fetch_one(&app.db.pool).await.unwrap();
    sqlx::query("INSERT INTO tasks (user_id, title) SELECT $1, 'bulk ' || g FROM generate_series(1, 1002) g")
        .bind(user_id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let page = list(&app, &token, ListTasksRequest::default()).await.unwrap();
    assert_eq!(page.tasks.len(), 50, "0 means 50");
    assert!(!page.next_page_token.is_empty());
    let page = list(&app, &token, ListTasksRequest { page_size: 5000, ..Default::default() }).await.unwrap();
    assert_eq!(page.tasks.len(), 1000, "cut to 1000");
    let page = list(
        &app,
        &token,
        ListTasksRequest { page_size: 1000, page_token: page.next_page_token, ..Default::default() },
    )
    .await
    .unwrap();
    assert_eq!(page.tasks.len(), 2);
    assert!(page.next_page_token.is_empty(), "empty at the end");
    let err = list(&app, &token, ListTasksRequest { page_size: -1, ..Default::default() }).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&err), ["page_size"]);
    let err =
        list(&app, &token, ListTasksRequest { order_by: "title".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["order_by"]);
}

#[tokio::test]
async fn page_tokens_are_bound_to_the_caller_and_the_query() {
    let app = TestApp::spawn().await;
    let (_, alice) = app.sign_up("alice@example.com").await;
    let (_, bob) = app.sign_up("bob@example.com").await;
    seed(&app, &alice.access_token, 3).await;
    let page = list(&app, &alice.access_token, ListTasksRequest { page_size: 1, ..Default::default() }).await.unwrap();
    let token = page.next_page_token;
    for (who, request) in [
        (&bob.access_token, ListTasksRequest { page_size: 1, page_token: token.clone(), ..Default::default() }),
        (
            &alice.access_token,
            ListTasksRequest { page_size: 1, page_token: token.clone(), completed: Some(false), ..Default::default() },
        ),
        (
            &alice.access_token,
            ListTasksRequest {
                page_size: 1,
                page_token: token.clone(),
                order_by: "update_time desc".into(),
                ..Default::default()
            },
        ),
        (&alice.access_token, ListTasksRequest { page_size: 1, page_token: "garbage".into(), ..Default::default() }),
    ] {
        let err = list(&app, who, request).await.unwrap_err();
        assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(bad_fields(&err), ["page_token"]);
    }
    // A different page size with the same query is fine.
    list(&app, &alice.access_token, ListTasksRequest { page_size: 2, page_token: token, ..Default::default() })
        .await
        .unwrap();
}
