use testkit::{TestApp, assert_error, authed, bad_fields};
use todo_proto::task::v1::*;
use tonic::Code;

struct User {
    token: String,
    id: String,
}

async fn user(app: &TestApp, email: &str) -> User {
    let (user, tokens) = app.sign_up(email).await;
    User { token: tokens.access_token, id: user.id }
}

async fn create(app: &TestApp, u: &User, request: CreateTaskRequest) -> Result<Task, tonic::Status> {
    app.tasks.clone().create_task(authed(request, &u.token)).await.map(|r| r.into_inner().task.unwrap())
}

fn titled(title: &str) -> CreateTaskRequest {
    CreateTaskRequest { title: title.into(), ..Default::default() }
}

#[tokio::test]
async fn create_get_update_delete() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let task = create(
        &app,
        &alice,
        CreateTaskRequest { title: "Buy milk".into(), description: Some("2 litres".into()), request_id: String::new() },
    )
    .await
    .unwrap();
    assert!(task.id > 0);
    assert_eq!(task.user_id, alice.id);
    assert_eq!(
        (task.title.as_str(), task.description.as_deref(), task.completed),
        ("Buy milk", Some("2 litres"), false)
    );
    assert!(task.create_time.is_some() && task.update_time.is_some() && !task.etag.is_empty());

    let got = app
        .tasks
        .clone()
        .get_task(authed(GetTaskRequest { id: task.id }, &alice.token))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(got, task);

    // Absent fields stay; completed changes; the etag moves on.
    let updated = app
        .tasks
        .clone()
        .update_task(authed(
            UpdateTaskRequest { id: task.id, completed: Some(true), etag: task.etag.clone(), ..Default::default() },
            &alice.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(
        (updated.title.as_str(), updated.description.as_deref(), updated.completed),
        ("Buy milk", Some("2 litres"), true)
    );
    assert_ne!(updated.etag, task.etag);
    assert!(updated.update_time.unwrap().seconds >= task.update_time.unwrap().seconds);

    // The old etag is stale now.
    let err = app
        .tasks
        .clone()
        .update_task(authed(
            UpdateTaskRequest {
                id: task.id,
                title: Some("Buy oat milk".into()),
                etag: task.etag.clone(),
                ..Default::default()
            },
            &alice.token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::Aborted, "ETAG_MISMATCH");

    // description "" clears it; no etag means unconditional.
    let cleared = app
        .tasks
        .clone()
        .update_task(authed(
            UpdateTaskRequest { id: task.id, description: Some(String::new()), ..Default::default() },
            &alice.token,
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(cleared.description, None);
    let stored: Option<String> = sqlx::query_scalar("SELECT description FROM tasks WHERE id = $1")
        .bind(task.id as i32)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, None);

    let err = app
        .tasks
        .clone()
        .delete_task(authed(DeleteTaskRequest { id: task.id, etag: updated.etag }, &alice.token))
        .await
        .unwrap_err();
    assert_error(&err, Code::Aborted, "ETAG_MISMATCH");
    app.tasks
        .clone()
        .delete_task(authed(DeleteTaskRequest { id: task.id, etag: cleared.etag }, &alice.token))
        .await
        .unwrap();
    let err = app.tasks.clone().get_task(authed(GetTaskRequest { id: task.id }, &alice.token)).await.unwrap_err();
    assert_error(&err, Code::NotFound, "TASK_NOT_FOUND");
    let err = app
        .tasks
        .clone()
        .delete_task(authed(DeleteTaskRequest { id: task.id, etag: String::new() }, &alice.token))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "TASK_NOT_FOUND");
}

#[tokio::test]
async fn another_users_task_is_indistinguishable_from_a_missing_one() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let mallory = user(&app, "mallory@example.com").await;
    let task = create(&app, &alice, titled("private")).await.unwrap();
    let missing = task.id + 1000;
    for id in [task.id, missing] {
        let get = app.tasks.clone().get_task(authed(GetTaskRequest { id }, &mallory.token)).await.unwrap_err();
        let update = app
            .tasks
            .clone()
            .update_task(authed(
                UpdateTaskRequest { id, title: Some("mine".into()), ..Default::default() },
                &mallory.token,
            ))
            .await
            .unwrap_err();
        let delete = app
            .tasks
            .clone()
            .delete_task(authed(DeleteTaskRequest { id, etag: task.etag.clone() }, &mallory.token))
            .await
            .unwrap_err();
        for err in [&get, &update, &delete] {
            assert_error(err, Code::NotFound, "TASK_NOT_FOUND");
            assert_eq!(err.message(), "task not found");
        }
    }
    let list =
        app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &mallory.token)).await.unwrap().into_inner();
    assert!(list.tasks.is_empty());
    let (title, completed): (String, bool) = sqlx::query_as("SELECT title, completed FROM tasks WHERE id = $1")
        .bind(task.id as i32)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!((title.as_str(), completed), ("private", false), "untouched");
}

#[tokio::test]
async fn lengths_are_checked_in_characters_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    // 255 and 1000 multi-byte characters fit, as PostgreSQL counts them.
    create(
        &app,
        &alice,
        CreateTaskRequest {
            title: "é".repeat(255), description: Some("😀".repeat(1000)), request_id: String::new()
        },
    )
    .await
    .unwrap();
    let cases = [
        (CreateTaskRequest { title: String::new(), ..Default::default() }, vec!["title"]),
        (CreateTaskRequest { title: "   ".into(), ..Default::default() }, vec!["title"]),
        (CreateTaskRequest { title: "é".repeat(256), ..Default::default() }, vec!["title"]),
        (CreateTaskRequest { title: "nul\0byte".into(), ..Default::default() }, vec!["title"]),
        (
            CreateTaskRequest { title: "ok".into(), description: Some("x".repeat(1001)), ..Default::default() },
            vec!["description"],
        ),
        (
            CreateTaskRequest { title: "".into(), description: Some("x".repeat(1001)), request_id: "x".repeat(200) },
            vec!["title", "description", "request_id"],
        ),
    ];
    for (request, fields) in cases {
        let err = create(&app, &alice, request).await.unwrap_err();
        assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(bad_fields(&err), fields);
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn update_validation() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let task = create(&app, &alice, titled("t")).await.unwrap();
    let cases = [
        (UpdateTaskRequest { id: task.id, ..Default::default() }, vec!["title", "description", "completed"]),
        (UpdateTaskRequest { id: 0, completed: Some(true), ..Default::default() }, vec!["id"]),
        (UpdateTaskRequest { id: task.id, title: Some(String::new()), ..Default::default() }, vec!["title"]),
        (
            UpdateTaskRequest { id: task.id, completed: Some(true), etag: "not an etag".into(), ..Default::default() },
            vec!["etag"],
        ),
    ];
    for (request, fields) in cases {
        let err = app.tasks.clone().update_task(authed(request, &alice.token)).await.unwrap_err();
        assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(bad_fields(&err), fields);
    }
    let err = app.tasks.clone().get_task(authed(GetTaskRequest { id: -4 }, &alice.token)).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["id"]);
    // Beyond the SERIAL range: it cannot exist.
    let err = app.tasks.clone().get_task(authed(GetTaskRequest { id: i64::MAX }, &alice.token)).await.unwrap_err();
    assert_error(&err, Code::NotFound, "TASK_NOT_FOUND");
}

#[tokio::test]
async fn a_repeated_request_id_returns_the_first_task() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let bob = user(&app, "bob@example.com").await;
    let request = CreateTaskRequest { title: "once".into(), description: None, request_id: "req-1".into() };
    let first = create(&app, &alice, request.clone()).await.unwrap();
    let again = create(&app, &alice, request.clone()).await.unwrap();
    assert_eq!(first, again);
    // Request ids are per user.
    let bobs = create(&app, &bob, request.clone()).await.unwrap();
    assert_ne!(bobs.id, first.id);

    // Concurrent twins create one task.
    let twin = CreateTaskRequest { title: "twins".into(), description: None, request_id: "req-2".into() };
    let results = futures_join(&app, &alice, twin, 8).await;
    assert!(results.windows(2).all(|w| w[0] == w[1]), "every twin got the same task");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE user_id = $1::uuid")
        .bind(&alice.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 2);

    // Without a request id, every call creates.
    create(&app, &alice, titled("again")).await.unwrap();
    create(&app, &alice, titled("again")).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE user_id = $1::uuid")
        .bind(&alice.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 4);
}

#[tokio::test]
async fn deleting_a_task_frees_its_request_id() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let request = CreateTaskRequest { title: "first".into(), description: None, request_id: "req-9".into() };
    let first = create(&app, &alice, request).await.unwrap();
    let delete = DeleteTaskRequest { id: first.id, etag: String::new() };
    app.tasks.clone().delete_task(authed(delete, &alice.token)).await.unwrap();
    // The same request id now makes a new task, not the deleted one again (nor an error).
    let request = CreateTaskRequest { title: "second".into(), description: None, request_id: "req-9".into() };
    let second = create(&app, &alice, request).await.unwrap();
    assert_ne!(second.id, first.id);
    assert_eq!(second.title, "second");
    let get = GetTaskRequest { id: second.id };
    assert_eq!(app.tasks.clone().get_task(authed(get, &alice.token)).await.unwrap().into_inner().task.unwrap(), second);
}

#[tokio::test]
async fn another_writers_change_moves_the_etag_and_a_stale_one_is_aborted() {
    // The etag is the row version, so a change made outside the service (an admin's UPDATE)
    // makes the client's copy stale too.
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let task = create(&app, &alice, titled("mine")).await.unwrap();
    sqlx::query("UPDATE tasks SET description = 'set by an admin' WHERE id = $1")
        .bind(task.id as i32)
        .execute(&app.db.pool)
        .await
        .unwrap();
    let get = GetTaskRequest { id: task.id };
    let now = app.tasks.clone().get_task(authed(get, &alice.token)).await.unwrap().into_inner().task.unwrap();
    assert_ne!(now.etag, task.etag, "the admin's write moved the etag");
    let update =
        UpdateTaskRequest { id: task.id, completed: Some(true), etag: task.etag.clone(), ..Default::default() };
    let err = app.tasks.clone().update_task(authed(update, &alice.token)).await.unwrap_err();
    assert_error(&err, Code::Aborted, "ETAG_MISMATCH");
    let delete = DeleteTaskRequest { id: task.id, etag: task.etag };
    let err = app.tasks.clone().delete_task(authed(delete, &alice.token)).await.unwrap_err();
    assert_error(&err, Code::Aborted, "ETAG_MISMATCH");
    // With the current etag both go through.
    let update = UpdateTaskRequest { id: task.id, completed: Some(true), etag: now.etag, ..Default::default() };
    app.tasks.clone().update_task(authed(update, &alice.token)).await.unwrap();
}

async fn futures_join(app: &TestApp, u: &User, request: CreateTaskRequest, n: usize) -> Vec<Task> {
    let mut handles = Vec::new();
    for _ in 0..n {
        let mut client = app.tasks.clone();
        let request = authed(request.clone(), &u.token);
        handles
            .push(tokio::spawn(async move { client.create_task(request).await.unwrap().into_inner().task.unwrap() }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
