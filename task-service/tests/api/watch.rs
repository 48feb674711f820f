//! WatchTasks: live changes on every instance, resume without gap or duplicate, the slow reader,
//! the end of a stream (shutdown, revocation, account deletion).

use crate::sync::{User, create, delete, rename, slow_update_then_create, user};
use std::time::{Duration, Instant};
use testkit::{TestApp, assert_error, authed, channel, spawn_task, task_config};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::*;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

type Client = TaskServiceClient<Channel>;

pub async fn watch(client: &Client, u: &User, sync_token: &str) -> Streaming<WatchTasksResponse> {
    let request = WatchTasksRequest { sync_token: sync_token.into() };
    client.clone().watch_tasks(authed(request, &u.token)).await.expect("WatchTasks starts").into_inner()
}

/// The next event, failing the test if none comes within 10 s.
pub async fn next(stream: &mut Streaming<WatchTasksResponse>) -> WatchTasksResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .expect("the stream is healthy")
        .expect("the stream goes on")
}

/// (change type, task id, title) of an event.
fn seen(event: &WatchTasksResponse) -> (ChangeType, i64, String) {
    let task = event.task.clone().expect("every event carries the task");
    (event.change_type(), task.id, task.title)
}

/// The status a stream ends with, within `limit` (else the test fails saying `what`); each event
/// before it is handed to `seen_before` (to assert what may still come first).
pub async fn end_of(
    stream: &mut Streaming<WatchTasksResponse>,
    limit: Duration,
    what: &str,
    mut seen_before: impl FnMut(WatchTasksResponse),
) -> tonic::Status {
    let ended = tokio::time::timeout(limit, async {
        loop {
            match stream.message().await {
                Ok(Some(event)) => seen_before(event),
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await;
    ended.unwrap_or_else(|_| panic!("{what}: no end within {limit:?}"))
}

async fn assert_quiet(stream: &mut Streaming<WatchTasksResponse>, for_how_long: Duration) {
    if let Ok(message) = tokio::time::timeout(for_how_long, stream.message()).await {
        panic!("expected no event, got {message:?}");
    }
}

#[tokio::test]
async fn changes_reach_every_stream_of_the_user_on_every_instance_and_no_one_else() {
    let app = TestApp::spawn().await;
    let other_instance = spawn_task(task_config(&app.db)).await;
    let other: Client = TaskServiceClient::new(channel(other_instance.addr).await);
    let alice = user(&app, "alice@example.com").await;
    let bob = user(&app, "bob@example.com").await;
    let mut here = watch(&app.tasks, &alice, "").await;
    let mut there = watch(&other, &alice, "").await;
    let mut bobs = watch(&app.tasks, &bob, "").await;

    // Written through one instance, through the other, and by an admin script; each change is
    // awaited on both streams before the next is made (changes in quick succession may arrive as
    // one: a stream sends a task as it is when it reads the feed).
    let mut slowest = Duration::ZERO;
    let task = create(&app, &alice, "first").await;
    let mut expect = async |change: ChangeType, title: &str, here: &mut Streaming<_>, there: &mut Streaming<_>| {
        let made = Instant::now();
        for stream in [here, there] {
            let event = next(stream).await;
            assert!(!event.sync_token.is_empty());
            assert_eq!(seen(&event), (change, task.id, title.to_string()));
        }
        slowest = slowest.max(made.elapsed());
    };
    expect(ChangeType::Created, "first", &mut here, &mut there).await;
    let request = UpdateTaskRequest { id: task.id, title: Some("second".into()), ..Default::default() };
    other.clone().update_task(authed(request, &alice.token)).await.unwrap();
    expect(ChangeType::Updated, "second", &mut here, &mut there).await;
    sqlx::query("UPDATE tasks SET title = 'third' WHERE id = $1")
        .bind(task.id as i32)
        .execute(&app.db.pool)
        .await
        .unwrap();
    expect(ChangeType::Updated, "third", &mut here, &mut there).await;
    delete(&app, &alice, task.id).await;
    expect(ChangeType::Deleted, "", &mut here, &mut there).await;
    eprintln!("slowest change to reach both streams (after the write returned): {slowest:?}");
    assert_quiet(&mut bobs, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_committed_change_reaches_a_stream_within_a_poll_or_two() {
    // Every 50 ms each instance polls the feeds. Ten changes committed by another writer, each
    // timed from its commit to its event on a stream of each of two instances: the median must
    // be a small multiple of the poll, 400 ms on a loaded machine (a poll of a second, or waking only on the streams' 1 s tick, would make it ~500 ms).
    let app = TestApp::spawn().await;
    let other_instance = spawn_task(task_config(&app.db)).await;
    let other: Client = TaskServiceClient::new(channel(other_instance.addr).await);
    let alice = user(&app, "alice@example.com").await;
    let task = create(&app, &alice, "timed").await;
    let mut streams = [watch(&app.tasks, &alice, "").await, watch(&other, &alice, "").await];
    let mut latencies = [Vec::new(), Vec::new()];
    for n in 0..10 {
        let title = format!("change {n}");
        sqlx::query("UPDATE tasks SET title = $1 WHERE id = $2")
            .bind(&title)
            .bind(task.id as i32)
            .execute(&app.db.pool)
            .await
            .unwrap();
        let committed = Instant::now();
        // Read one after the other: the second's time is at most its own latency or the first's.
        for (stream, latencies) in streams.iter_mut().zip(latencies.iter_mut()) {
            assert_eq!(seen(&next(stream).await), (ChangeType::Updated, task.id, title.clone()));
            latencies.push(committed.elapsed());
        }
    }
    for (instance, mut latencies) in latencies.into_iter().enumerate() {
        latencies.sort();
        eprintln!("instance {instance}, commit to event: median {:?}, slowest {:?}", latencies[5], latencies[9]);
        let median = latencies[5];
        assert!(median < Duration::from_millis(400), "instance {instance}: median {median:?} of {latencies:?}");
    }
}

#[tokio::test]
async fn idle_streams_query_nothing_while_nothing_changes() {
    // Streams wait for the hub's poll, which reads only task_feeds; an idle stream reads its feed
    // (task_tombstones with tasks) only when woken. With task_tombstones locked, any such read
    // would wait.
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let mut streams = Vec::new();
    // As many as one user may open (MAX_STREAMS_PER_USER).
    for _ in 0..16 {
        streams.push(watch(&app.tasks, &alice, "").await);
    }
    // One change that every stream receives: each has done its first read and is idle now.
    let task = create(&app, &alice, "seen by all").await;
    for stream in &mut streams {
        assert_eq!(seen(&next(stream).await).1, task.id);
    }
    // The hub wakes a user while the feed's stamp is at or after the oldest transaction running
    // anywhere in the cluster (other tests' too): a change can wake its streams more than once.
    // Wait until that horizon has passed alice's change, then for a few polls (50 ms each), so
    // that no wake-up for it is still due.
    let started = Instant::now();
    loop {
        let passed: bool = sqlx::query_scalar(
            "SELECT pg_snapshot_xmin(pg_current_snapshot()) > changed_xid FROM task_feeds WHERE user_id = $1",
        )
        .bind(alice.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        if passed {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "some transaction in the cluster stayed open 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut lock = app.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE task_tombstones IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    // Over 2.5 s: the hub polls 50 times and each stream ticks twice (its token re-check).
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(testkit::statements_waiting_on_locks(&app.db.pool).await, 0, "an idle stream read its feed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lock.rollback().await.unwrap();
}

#[tokio::test]
async fn a_stream_resumed_from_its_token_replays_exactly_what_was_missed_then_goes_live() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let mut stream = watch(&app.tasks, &alice, "").await;
    let a = create(&app, &alice, "a").await;
    let event = next(&mut stream).await;
    assert_eq!(seen(&event), (ChangeType::Created, a.id, "a".into()));
    drop(stream);

    // Offline: a is changed then deleted, b created, c created and renamed, d created and deleted.
    rename(&app, &alice, a.id, "a2").await;
    let b = create(&app, &alice, "b").await;
    delete(&app, &alice, a.id).await;
    let c = create(&app, &alice, "c").await;
    rename(&app, &alice, c.id, "c2").await;
    let d = create(&app, &alice, "d").await;
    delete(&app, &alice, d.id).await;

    let mut stream = watch(&app.tasks, &alice, &event.sync_token).await;
    let replayed = [next(&mut stream).await, next(&mut stream).await, next(&mut stream).await];
    assert_eq!(
        replayed.iter().map(seen).collect::<Vec<_>>(),
        [
            (ChangeType::Created, b.id, "b".into()),
            (ChangeType::Deleted, a.id, String::new()),
            (ChangeType::Created, c.id, "c2".into())
        ]
    );
    // Then live, with nothing repeated.
    let e = create(&app, &alice, "e").await;
    assert_eq!(seen(&next(&mut stream).await), (ChangeType::Created, e.id, "e".into()));
    assert_quiet(&mut stream, Duration::from_millis(300)).await;

    // A token from WatchTasks continues in SyncTasks, and the other way round.
    let request = SyncTasksRequest { sync_token: replayed[0].sync_token.clone(), page_size: 0 };
    let synced = app.tasks.clone().sync_tasks(authed(request, &alice.token)).await.unwrap().into_inner();
    assert_eq!(synced.deleted_task_ids, [a.id]);
    assert_eq!(synced.changed_tasks.iter().map(|t| t.id).collect::<Vec<_>>(), [c.id, e.id]);
}

#[tokio::test]
async fn a_slow_transaction_reaches_the_stream_before_the_change_that_waited_for_it() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let task = create(&app, &alice, "before").await;
    let mut stream = watch(&app.tasks, &alice, "").await;
    let (slow, fast) = slow_update_then_create(&app, &alice, &task, "fast").await;
    assert_quiet(&mut stream, Duration::from_millis(300)).await;
    slow.commit().await.unwrap();
    let fast = fast.await.unwrap();
    assert_eq!(seen(&next(&mut stream).await), (ChangeType::Updated, task.id, "slow".into()));
    assert_eq!(seen(&next(&mut stream).await), (ChangeType::Created, fast.id, "fast".into()));
}

#[tokio::test]
async fn deleting_an_account_deletes_its_tasks_in_the_feed_and_ends_its_streams() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let bob = user(&app, "bob@example.com").await;
    let alices: Vec<i64> = [create(&app, &alice, "a").await.id, create(&app, &alice, "b").await.id].into();
    let bobs: Vec<i64> = [create(&app, &bob, "c").await.id, create(&app, &bob, "d").await.id].into();
    let mut alice_stream = watch(&app.tasks, &alice, "").await;
    let mut bob_stream = watch(&app.tasks, &bob, "").await;

    // An admin removes bob's tasks with one statement: a DELETED event for each.
    sqlx::query("DELETE FROM tasks WHERE user_id = $1").bind(bob.id).execute(&app.db.pool).await.unwrap();
    let mut deleted = [next(&mut bob_stream).await, next(&mut bob_stream).await];
    deleted.sort_by_key(|e| e.task.as_ref().unwrap().id);
    assert_eq!(
        deleted.iter().map(seen).collect::<Vec<_>>(),
        bobs.iter().map(|id| (ChangeType::Deleted, *id, String::new())).collect::<Vec<_>>()
    );

    // Alice deletes her account: the cascade records a tombstone per task, and her stream ends.
    let request = todo_proto::auth::v1::DeleteAccountRequest { password: testkit::PASSWORD.into() };
    app.auth.clone().delete_account(authed(request, &alice.token)).await.unwrap();
    let tombstones: Vec<i32> =
        sqlx::query_scalar("SELECT task_id FROM task_tombstones WHERE user_id = $1 ORDER BY task_id")
            .bind(alice.id)
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(tombstones.into_iter().map(i64::from).collect::<Vec<_>>(), alices);
    // Her DELETED events may come first; then the stream must end.
    let deleted_first = |event: WatchTasksResponse| assert_eq!(event.change_type(), ChangeType::Deleted);
    let ended = end_of(&mut alice_stream, Duration::from_secs(5), "a deleted account's stream", deleted_first).await;
    assert_error(&ended, Code::Unauthenticated, "SESSION_REVOKED");
}

#[tokio::test]
async fn a_reader_that_falls_behind_is_cut_off_instead_of_growing_memory() {
    let app = TestApp::spawn().await;
    let mut config = task_config(&app.db);
    config.watch =
        task_service::sync::watch::WatchSettings { buffer: 16, slow_reader: Duration::from_secs(1), ..config.watch };
    let server = spawn_task(config).await;
    // A client with small HTTP/2 windows, so that not reading soon pushes back on the server.
    let endpoint = Channel::from_shared(format!("http://{}", server.addr)).unwrap();
    let endpoint = endpoint.initial_stream_window_size(Some(16 * 1024)).initial_connection_window_size(Some(16 * 1024));
    let client = TaskServiceClient::new(endpoint.connect().await.unwrap());
    let alice = user(&app, "alice@example.com").await;
    let mut stream = watch(&client, &alice, "").await;

    // 5,000 changes at once, and the client does not read for 3 s.
    sqlx::query("INSERT INTO tasks (user_id, title, description) SELECT $1, 'bulk ' || g, repeat('x', 200) FROM generate_series(1, 5000) g")
        .bind(alice.id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut received = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("the stream moves") {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended without a status after {received} events"),
            Err(status) => break status,
        }
    };
    assert_error(&status, Code::ResourceExhausted, "SLOW_READER");
    assert!(received < 5000, "cut off before the end, after {received} events");
    eprintln!("slow reader cut off after {received} of 5000 events");
    // The server is fine: a new stream resumes.
    let mut again = watch(&client, &alice, "").await;
    let task = create(&app, &alice, "after").await;
    assert_eq!(next(&mut again).await.task.unwrap().id, task.id);
}

/// A client whose HTTP/2 windows hold only 16 KiB, so that not reading soon pushes back on the
/// server instead of everything landing in the client's buffers.
async fn small_window_client(server: &testkit::RunningServer) -> Client {
    let endpoint = Channel::from_shared(format!("http://{}", server.addr)).unwrap();
    let endpoint = endpoint.initial_stream_window_size(Some(16 * 1024)).initial_connection_window_size(Some(16 * 1024));
    TaskServiceClient::new(endpoint.connect().await.unwrap())
}

/// `n` tasks of alice's at once, each event about 300 bytes.
async fn bulk_insert(app: &TestApp, owner: &User, n: i32) {
    sqlx::query("INSERT INTO tasks (user_id, title, description) SELECT $1, 'bulk ' || g, repeat('x', 200) FROM generate_series(1, $2) g")
        .bind(owner.id)
        .bind(n)
        .execute(&app.db.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_reader_that_takes_nothing_is_cut_even_when_its_events_fit_in_the_buffer() {
    // 350 events of some 300 bytes: tonic takes up to 32 KiB of them at a time to encode (about
    // 110) and the client's window holds 16 KiB, so well over 100 sit in the server's buffer of
    // 256, without a send ever blocking. A reader that takes none of them for the slow-reader
    // time is cut all the same, and what it left is freed.
    let app = TestApp::spawn().await;
    let mut config = task_config(&app.db);
    config.watch =
        task_service::sync::watch::WatchSettings { buffer: 256, slow_reader: Duration::from_secs(1), ..config.watch };
    let server = spawn_task(config).await;
    let client = small_window_client(&server).await;
    let alice = user(&app, "alice@example.com").await;
    let mut stream = watch(&client, &alice, "").await;
    bulk_insert(&app, &alice, 350).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut received = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
            Err(_) => panic!("the stream was still open after {received} events: an idle reader held its buffer"),
            Ok(Ok(Some(_))) => received += 1,
            Ok(Ok(None)) => panic!("the stream ended without a status after {received} events"),
            Ok(Err(status)) => break status,
        }
    };
    assert_error(&status, Code::ResourceExhausted, "SLOW_READER");
    assert!(received < 350, "the buffered events were dropped, not sent: {received} arrived");
}

#[tokio::test]
async fn a_long_replay_ends_soon_after_its_session_is_revoked() {
    // 400 changes to a reader taking one every 20 ms: a replay of some 8 s. The session is
    // revoked after 20 events; the stream must not read on to the end.
    let app = TestApp::spawn().await;
    let mut config = task_config(&app.db);
    config.watch =
        task_service::sync::watch::WatchSettings { buffer: 16, slow_reader: Duration::from_secs(10), ..config.watch };
    let server = spawn_task(config).await;
    let client = small_window_client(&server).await;
    let alice = user(&app, "alice@example.com").await;
    let mut stream = watch(&client, &alice, "").await;
    bulk_insert(&app, &alice, 400).await;
    for _ in 0..20 {
        next(&mut stream).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("UPDATE sessions SET revoked_at = now(), revoked_reason = 'logout' WHERE user_id = $1")
        .bind(alice.id)
        .execute(&app.db.pool)
        .await
        .unwrap();
    // Still reading at the same pace, so the replay would go on for another 7 s.
    let mut after = 0;
    let started = Instant::now();
    let ended = loop {
        assert!(started.elapsed() < Duration::from_secs(15), "no end within 15 s, after {after} events");
        match tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("the stream moves") {
            Ok(Some(_)) => after += 1,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_error(&ended, Code::Unauthenticated, "SESSION_REVOKED");
    // What was already on its way (the client's window, the buffer, a page) may still arrive;
    // the rest of the replay (380 events) must not.
    assert!(after < 150, "{after} events arrived after the revocation");
}

#[tokio::test]
async fn streams_end_with_unavailable_when_the_server_stops_or_unauthenticated_when_revoked() {
    let app = TestApp::spawn().await;
    // A long drain: a stream that held the stop would show as a stop of 10 s.
    let mut config = task_config(&app.db);
    config.drain_timeout = Duration::from_secs(10);
    let server = spawn_task(config).await;
    let client = TaskServiceClient::new(channel(server.addr).await);
    let alice = user(&app, "alice@example.com").await;
    let mut stream = watch(&client, &alice, "").await;
    let stopping = Instant::now();
    let stopped = tokio::spawn(server.stop());
    let status = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap_err();
    assert_error(&status, Code::Unavailable, "SHUTTING_DOWN");
    stopped.await.unwrap().expect("the server stops cleanly");
    assert!(stopping.elapsed() < Duration::from_secs(4), "a stream does not hold the stop: {:?}", stopping.elapsed());

    // Logging out ends the streams of that session.
    let (_, tokens) = (alice.id, alice.token.clone());
    let mut stream = watch(&app.tasks, &alice, "").await;
    let login = todo_proto::auth::v1::LogoutAllRequest {};
    app.auth.clone().logout_all(authed(login, &tokens)).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap_err();
    assert_error(&status, Code::Unauthenticated, "SESSION_REVOKED");
}

#[tokio::test]
async fn watch_refuses_bad_and_expired_tokens_up_front() {
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let request = WatchTasksRequest { sync_token: "junk".into() };
    let status = app.tasks.clone().watch_tasks(authed(request, &alice.token)).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let ahead =
        task_service::sync::token::encode(alice.id, task_service::sync::token::SyncPosition { seq: 99, floor: 0 });
    let request = WatchTasksRequest { sync_token: ahead };
    let status = app.tasks.clone().watch_tasks(authed(request, &alice.token)).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "SYNC_TOKEN_UNKNOWN");
    let status = app.tasks.clone().watch_tasks(WatchTasksRequest::default()).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "MISSING_TOKEN");

    // A token older than a pruned tombstone would miss that deletion: refused, as in SyncTasks.
    let a = create(&app, &alice, "a").await;
    let request = SyncTasksRequest { sync_token: String::new(), page_size: 0 };
    let old = app.tasks.clone().sync_tasks(authed(request, &alice.token)).await.unwrap().into_inner().next_sync_token;
    delete(&app, &alice, a.id).await;
    sqlx::query("UPDATE task_tombstones SET deleted_at = now() - interval '46 days'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let retention = Duration::from_secs(45 * 86_400);
    assert_eq!(task_service::sync::feed::prune(&app.db.pool.clone().into(), retention).await.unwrap(), 1);
    let request = WatchTasksRequest { sync_token: old };
    let status = app.tasks.clone().watch_tasks(authed(request, &alice.token)).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "SYNC_TOKEN_EXPIRED");
}

#[tokio::test]
async fn a_user_has_at_most_max_streams_per_user_open_and_others_are_not_affected() {
    use tonic_types::StatusExt;
    let app = TestApp::spawn().await;
    let mut config = task_config(&app.db);
    config.watch.max_streams_per_user = 2;
    let server = spawn_task(config).await;
    let client = TaskServiceClient::new(channel(server.addr).await);
    let (alice, bob) = (user(&app, "alice@example.com").await, user(&app, "bob@example.com").await);
    let open = |who: &User| {
        let (mut client, token) = (client.clone(), who.token.clone());
        async move { client.watch_tasks(authed(WatchTasksRequest { sync_token: String::new() }, &token)).await }
    };
    let first = open(&alice).await.expect("the first stream");
    let _second = open(&alice).await.expect("the second stream");
    let refused = open(&alice).await.expect_err("a third stream is over the limit");
    assert_error(&refused, Code::ResourceExhausted, "QUOTA_EXCEEDED");
    let quota = refused.get_details_quota_failure().expect("a QuotaFailure names the limit");
    assert_eq!(quota.violations[0].subject, format!("user:{}", alice.id));
    assert!(quota.violations[0].description.contains("MAX_STREAMS_PER_USER"), "{quota:?}");
    // Another user is not affected, and a stream closed frees its place.
    let _bobs = open(&bob).await.expect("bob's stream");
    drop(first);
    let started = Instant::now();
    while let Err(status) = open(&alice).await {
        assert_error(&status, Code::ResourceExhausted, "QUOTA_EXCEEDED");
        assert!(started.elapsed() < Duration::from_secs(5), "a closed stream's place was not freed within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
