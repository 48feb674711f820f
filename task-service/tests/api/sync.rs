//! SyncTasks and GetTaskStats: the change feed read a page at a time, whoever wrote the changes.

use std::collections::BTreeMap;
use std::time::Duration;
use task_service::sync::token::SyncPosition;
use testkit::{TestApp, assert_error, authed, bad_fields};
use todo_proto::task::v1::*;
use tonic::Code;
use uuid::Uuid;

#[derive(Clone)]
pub struct User {
    pub token: String,
    pub id: Uuid,
}

pub async fn user(app: &TestApp, email: &str) -> User {
    let (user, tokens) = app.sign_up(email).await;
    User { token: tokens.access_token, id: user.id.parse().unwrap() }
}

pub async fn create(app: &TestApp, u: &User, title: &str) -> Task {
    let request = CreateTaskRequest { title: title.into(), ..Default::default() };
    app.tasks.clone().create_task(authed(request, &u.token)).await.unwrap().into_inner().task.unwrap()
}

pub async fn rename(app: &TestApp, u: &User, id: i64, title: &str) -> Task {
    let request = UpdateTaskRequest { id, title: Some(title.into()), ..Default::default() };
    app.tasks.clone().update_task(authed(request, &u.token)).await.unwrap().into_inner().task.unwrap()
}

pub async fn delete(app: &TestApp, u: &User, id: i64) {
    app.tasks.clone().delete_task(authed(DeleteTaskRequest { id, etag: String::new() }, &u.token)).await.unwrap();
}

/// A slow writer changes `task` and keeps its transaction open, then a CreateTask of `title` starts
/// and is seen waiting for the slow one's lock (a user's changes commit in order). Commit the
/// transaction to let the create finish.
pub async fn slow_update_then_create(
    app: &TestApp,
    u: &User,
    task: &Task,
    title: &str,
) -> (sqlx::Transaction<'static, sqlx::Postgres>, tokio::task::JoinHandle<Task>) {
    let mut slow = app.db.pool.begin().await.unwrap();
    sqlx::query("UPDATE tasks SET title = 'slow' WHERE id = $1")
        .bind(task.id as i32)
        .execute(&mut *slow)
        .await
        .unwrap();
    let (tasks, token, title) = (app.tasks.clone(), u.token.clone(), title.to_owned());
    let fast = tokio::spawn(async move {
        let request = CreateTaskRequest { title, ..Default::default() };
        tasks.clone().create_task(authed(request, &token)).await.unwrap().into_inner().task.unwrap()
    });
    // Waited for, not slept for: under load the create could still be on its way after any sleep.
    testkit::until_waiting_on_locks(&app.db.pool, 1).await;
    (slow, fast)
}

async fn sync(app: &TestApp, u: &User, token: &str, page_size: i32) -> Result<SyncTasksResponse, tonic::Status> {
    let request = SyncTasksRequest { sync_token: token.into(), page_size };
    app.tasks.clone().sync_tasks(authed(request, &u.token)).await.map(|r| r.into_inner())
}

/// Every page from `token` on: (changed titles by id, deleted ids, the last token).
async fn sync_all(app: &TestApp, u: &User, token: &str) -> (BTreeMap<i64, String>, Vec<i64>, String) {
    let (mut changed, mut deleted, mut token) = (BTreeMap::new(), Vec::new(), token.to_owned());
    loop {
        let page = sync(app, u, &token, 2).await.unwrap();
        changed.extend(page.changed_tasks.into_iter().map(|t| (t.id, t.title)));
        deleted.extend(page.deleted_task_ids);
        token = page.next_sync_token;
        if !page.has_more {
            return (changed, deleted, token);
        }
    }
}

fn titles(pairs: &[(i64, &str)]) -> BTreeMap<i64, String> {
    pairs.iter().map(|(id, title)| (*id, title.to_string())).collect()
}

#[tokio::test]
async fn sync_from_the_start_then_only_the_changes() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let bob = user(&app, "bob@example.com").await;
    let (a, b, c) = (create(&app, &alice, "a").await, create(&app, &alice, "b").await, create(&app, &alice, "c").await);
    create(&app, &bob, "bob's").await;

    // Pages of 2: the first says more follow.
    let first = sync(&app, &alice, "", 2).await.unwrap();
    assert_eq!((first.changed_tasks.len(), first.has_more), (2, true));
    let (changed, deleted, token) = sync_all(&app, &alice, "").await;
    assert_eq!(changed, titles(&[(a.id, "a"), (b.id, "b"), (c.id, "c")]));
    assert!(deleted.is_empty());

    rename(&app, &alice, a.id, "a2").await;
    delete(&app, &alice, b.id).await;
    let d = create(&app, &alice, "d").await;
    // Created and deleted since the token: the client never knew it, so it is in neither list.
    let e = create(&app, &alice, "e").await;
    delete(&app, &alice, e.id).await;
    let (changed, deleted, next) = sync_all(&app, &alice, &token).await;
    assert_eq!(changed, titles(&[(a.id, "a2"), (d.id, "d")]));
    assert_eq!(deleted, vec![b.id]);

    // Nothing new: nothing returned, and the token stays usable.
    let again = sync(&app, &alice, &next, 0).await.unwrap();
    assert!(again.changed_tasks.is_empty() && again.deleted_task_ids.is_empty() && !again.has_more);
    assert_eq!(again.next_sync_token, next);
    // Changed tasks come back whole, as GetTask shows them.
    let renamed = sync(&app, &alice, &token, 0).await.unwrap().changed_tasks.into_iter().find(|t| t.id == a.id);
    let got = app.tasks.clone().get_task(authed(GetTaskRequest { id: a.id }, &alice.token)).await.unwrap();
    assert_eq!(renamed, got.into_inner().task);
}

#[tokio::test]
async fn bad_sync_requests_name_the_field() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let bob = user(&app, "bob@example.com").await;
    create(&app, &alice, "a").await;
    let alices = sync(&app, &alice, "", 0).await.unwrap().next_sync_token;

    for (who, token) in [(&alice, "not a token"), (&bob, alices.as_str())] {
        let status = sync(&app, who, token, 0).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(bad_fields(&status), ["sync_token"]);
    }
    let status = sync(&app, &alice, "", -1).await.unwrap_err();
    assert_eq!(bad_fields(&status), ["page_size"]);

    // A position the feed has never reached (a token from another database, or one restored
    // from an older backup): sync again from the start.
    let ahead = task_service::sync::token::encode(alice.id, SyncPosition { seq: 1_000, floor: 0 });
    assert_error(&sync(&app, &alice, &ahead, 0).await.unwrap_err(), Code::FailedPrecondition, "SYNC_TOKEN_UNKNOWN");
}

#[tokio::test]
async fn tokens_older_than_the_tombstones_must_sync_again() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let (a, b) = (create(&app, &alice, "a").await, create(&app, &alice, "b").await);
    let old = sync(&app, &alice, "", 0).await.unwrap().next_sync_token;
    delete(&app, &alice, a.id).await;
    let recent = sync(&app, &alice, &old, 0).await.unwrap().next_sync_token;
    let (c, d, e) = (create(&app, &alice, "c").await, create(&app, &alice, "d").await, create(&app, &alice, "e").await);
    // e's deletion is the newest change, and it will be pruned too.
    delete(&app, &alice, e.id).await;

    // A month and a half later the tombstone is pruned, as the service's hourly job does.
    sqlx::query("UPDATE task_tombstones SET deleted_at = now() - interval '46 days'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let removed =
        task_service::sync::feed::prune(&app.db.pool.clone().into(), Duration::from_secs(45 * 86_400)).await.unwrap();
    assert_eq!(removed, 2);

    // The old token would miss the deletion: refused, with what to do.
    let status = sync(&app, &alice, &old, 0).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "SYNC_TOKEN_EXPIRED");
    assert!(status.message().contains("empty sync_token"), "{status:?}");
    // A token from between the two deletions is refused too (e's tombstone is gone).
    assert_error(&sync(&app, &alice, &recent, 0).await.unwrap_err(), Code::FailedPrecondition, "SYNC_TOKEN_EXPIRED");
    // A fresh sync pages through the current list (pages of 2), and the token it ends with
    // goes on: tombstones pruned before it began do not concern it.
    let (changed, deleted, fresh) = sync_all(&app, &alice, "").await;
    assert_eq!((changed, deleted), (titles(&[(b.id, "b"), (c.id, "c"), (d.id, "d")]), vec![]));
    let next = sync(&app, &alice, &fresh, 0).await.unwrap();
    assert!(next.changed_tasks.is_empty() && next.deleted_task_ids.is_empty() && !next.has_more);
    rename(&app, &alice, c.id, "c2").await;
    let (changed, _, _) = sync_all(&app, &alice, &fresh).await;
    assert_eq!(changed, titles(&[(c.id, "c2")]));
}

#[tokio::test]
async fn changes_by_anyone_are_in_the_feed() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let bob = user(&app, "bob@example.com").await;
    let a = create(&app, &alice, "a").await;
    let moved = create(&app, &alice, "moved").await;
    let (_, _, alices) = sync_all(&app, &alice, "").await;
    let (_, _, bobs) = sync_all(&app, &bob, "").await;

    // An admin script: a new task, a change, a task handed over to another user, all in one
    // transaction.
    let admin = sqlx::query_scalar::<_, i32>(
        "WITH added AS (INSERT INTO tasks (user_id, title) VALUES ($1, 'from admin') RETURNING id),
              renamed AS (UPDATE tasks SET title = 'a by admin' WHERE id = $2),
              handed AS (UPDATE tasks SET user_id = $3 WHERE id = $4)
         SELECT id FROM added",
    )
    .bind(alice.id)
    .bind(a.id as i32)
    .bind(bob.id)
    .bind(moved.id as i32)
    .fetch_one(&app.db.pool)
    .await
    .unwrap() as i64;

    let (changed, deleted, alices) = sync_all(&app, &alice, &alices).await;
    assert_eq!(changed, titles(&[(a.id, "a by admin"), (admin, "from admin")]));
    assert_eq!(deleted, vec![moved.id]);
    let (changed, deleted, _) = sync_all(&app, &bob, &bobs).await;
    assert_eq!((changed, deleted), (titles(&[(moved.id, "moved")]), vec![]));

    // TRUNCATE records no rows: every feed starts over and every old token must sync again.
    sqlx::raw_sql("TRUNCATE tasks CASCADE").execute(&app.db.pool).await.unwrap();
    assert_error(&sync(&app, &alice, &alices, 0).await.unwrap_err(), Code::FailedPrecondition, "SYNC_TOKEN_EXPIRED");
    let (changed, deleted, fresh) = sync_all(&app, &alice, "").await;
    assert!(changed.is_empty() && deleted.is_empty());
    // The token a fresh sync ends with goes on after the reset.
    let later = create(&app, &alice, "after the reset").await;
    let (changed, _, _) = sync_all(&app, &alice, &fresh).await;
    assert_eq!(changed, titles(&[(later.id, "after the reset")]));
}

#[tokio::test]
async fn a_transaction_that_started_first_and_committed_last_is_not_skipped() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let slow_task = create(&app, &alice, "before").await;
    let (_, _, token) = sync_all(&app, &alice, "").await;

    // A slow writer changes a task and keeps its transaction open while a fast one starts after it.
    let (slow, fast) = slow_update_then_create(&app, &alice, &slow_task, "fast").await;
    // A sync meanwhile sees neither, and its token does not move past the slow change.
    let (changed, _, during) = sync_all(&app, &alice, &token).await;
    assert!(changed.is_empty(), "uncommitted changes are not visible: {changed:?}");
    slow.commit().await.unwrap();
    let fast = fast.await.unwrap();

    let (changed, _, _) = sync_all(&app, &alice, &during).await;
    assert_eq!(changed, titles(&[(slow_task.id, "slow"), (fast.id, "fast")]));
}

#[tokio::test]
async fn stats_count_the_callers_tasks() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let bob = user(&app, "bob@example.com").await;
    let stats = |u: &User| {
        let (tasks, token) = (app.tasks.clone(), u.token.clone());
        async move { tasks.clone().get_task_stats(authed(GetTaskStatsRequest {}, &token)).await.unwrap().into_inner() }
    };
    assert_eq!(stats(&alice).await, GetTaskStatsResponse { total: 0, completed: 0 });
    for title in ["a", "b", "c"] {
        create(&app, &alice, title).await;
    }
    let done = create(&app, &alice, "done").await;
    let request = UpdateTaskRequest { id: done.id, completed: Some(true), ..Default::default() };
    app.tasks.clone().update_task(authed(request, &alice.token)).await.unwrap();
    create(&app, &bob, "bob's").await;
    assert_eq!(stats(&alice).await, GetTaskStatsResponse { total: 4, completed: 1 });
    assert_eq!(stats(&bob).await, GetTaskStatsResponse { total: 1, completed: 0 });
    let status = app.tasks.clone().get_task_stats(GetTaskStatsRequest {}).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "MISSING_TOKEN");
}

#[tokio::test]
async fn a_task_back_at_its_old_id_is_changed_not_deleted() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let a = create(&app, &alice, "a").await;
    let (_, _, knew_a) = sync_all(&app, &alice, "").await;
    delete(&app, &alice, a.id).await;
    let (_, deleted, knew_deletion) = sync_all(&app, &alice, &knew_a).await;
    assert_eq!(deleted, vec![a.id]);

    // An admin puts it back under its old id: its tombstone is still there, and tells nothing.
    sqlx::query("INSERT INTO tasks (id, user_id, title) VALUES ($1, $2, 'a again')")
        .bind(a.id as i32)
        .bind(alice.id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    for token in [&knew_a, &knew_deletion] {
        let (changed, deleted, _) = sync_all(&app, &alice, token).await;
        assert_eq!((changed, deleted), (titles(&[(a.id, "a again")]), vec![]));
    }
    let (changed, deleted, _) = sync_all(&app, &alice, "").await;
    assert_eq!((changed, deleted), (titles(&[(a.id, "a again")]), vec![]));
}
