//! One hostile account against the real task-service binary, beside an ordinary one: it fills its
//! task quota with the largest tasks, opens streams from an early sync token on many connections
//! and never reads them, and loops calls as fast as it can. Its excess gets RESOURCE_EXHAUSTED
//! QUOTA_EXCEEDED, its unread streams are cut (SLOW_READER), every call of the other user
//! succeeds and its own stream keeps delivering, and the server's resident memory stays bounded
//! and does not grow from one flood to the next.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use testkit::process::{ServiceProcess, free_addr, rss_bytes, until_serving};
use testkit::test_database::TestDatabase;
use testkit::{assert_error, authed};
use todo_proto::auth::v1::SignUpRequest;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::*;
use tonic::Code;
use tonic::transport::Channel;

const MIB: u64 = 1024 * 1024;
/// Tasks the hostile user may have (`MAX_TASKS_PER_USER` for this server).
const MAX_TASKS: usize = 500;
/// Streams it tries to open per flood: 8 connections of 25.
const STREAM_ATTEMPTS: usize = 200;

async fn connect(addr: std::net::SocketAddr) -> TaskServiceClient<Channel> {
    TaskServiceClient::new(testkit::channel(addr).await)
}

async fn access_token(auth: &mut AuthServiceClient<Channel>, email: &str) -> String {
    let request = SignUpRequest { email: email.into(), password: testkit::PASSWORD.into() };
    auth.sign_up(request).await.unwrap().into_inner().tokens.unwrap().access_token
}

/// The largest task the API takes: a 1,000-character description of 4-byte characters (500 of
/// them replay 2 MB, more than a stream's 256-event buffer and the HTTP/2 window hold).
fn large_task(n: usize) -> CreateTaskRequest {
    CreateTaskRequest { title: format!("flood {n}"), description: Some("🌊".repeat(1000)), request_id: String::new() }
}

/// What one flood did.
#[derive(Debug, Default)]
struct Flood {
    streams_opened: usize,
    streams_refused: usize,
    calls_served: u64,
    calls_refused: u64,
}

/// One flood by `token`'s user: opens `STREAM_ATTEMPTS` WatchTasks streams from `early`, a sync
/// token from before its tasks (each replays every large task), on 8 connections and never reads
/// them, and loops ListTasks on 4 tasks for `length`. Returns what was opened and refused, and the streams'
/// ends: each must have been cut for a slow reader.
async fn flood(addr: std::net::SocketAddr, token: &str, early: &str, length: Duration) -> Flood {
    let mut result = Flood::default();
    let mut held = Vec::new();
    for _ in 0..8 {
        // The smallest HTTP/2 windows a client may give, so that the server, not the client,
        // holds what the streams have not read.
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap();
        let client = TaskServiceClient::new(channel);
        for _ in 0..STREAM_ATTEMPTS / 8 {
            match client.clone().watch_tasks(authed(WatchTasksRequest { sync_token: early.to_owned() }, token)).await {
                Ok(stream) => {
                    result.streams_opened += 1;
                    held.push(stream.into_inner());
                }
                Err(status) => {
                    assert_error(&status, Code::ResourceExhausted, "QUOTA_EXCEEDED");
                    result.streams_refused += 1;
                }
            }
        }
    }
    let (stop, served, refused) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = connect(addr).await;
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (mut client, token) = (client.clone(), token.to_owned());
        let (stop, served, refused) = (stop.clone(), served.clone(), refused.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.list_tasks(authed(ListTasksRequest { page_size: 10, ..Default::default() }, &token)).await
                {
                    Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        assert_error(&status, Code::ResourceExhausted, "QUOTA_EXCEEDED");
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    for task in loops {
        task.await.unwrap();
    }
    (result.calls_served, result.calls_refused) = (served.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    // Read what each stream got before it was cut, then its end: all at once, since the
    // streams of a connection share its (small) window, which only reading frees.
    let mut ends = tokio::task::JoinSet::new();
    for (i, mut stream) in held.into_iter().enumerate() {
        ends.spawn(async move {
            let mut got = 0;
            loop {
                match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
                    Err(_) => panic!("an unread stream ({i}) was still open after the flood, having sent {got}"),
                    Ok(Ok(Some(_))) => got += 1,
                    Ok(Ok(None)) => panic!("an unread stream ({i}) ended as if all was well"),
                    Ok(Err(status)) => break status,
                }
            }
        });
    }
    while let Some(end) = ends.join_next().await {
        assert_error(&end.unwrap(), Code::ResourceExhausted, "SLOW_READER");
    }
    result
}

/// What the ordinary user does during a flood, every 100 ms: create, get, list; all must succeed,
/// and its own stream must deliver each creation.
async fn ordinary_user(addr: std::net::SocketAddr, token: String, stop: Arc<AtomicBool>) -> usize {
    let mut client = connect(addr).await;
    let mut stream = client
        .watch_tasks(authed(WatchTasksRequest { sync_token: String::new() }, &token))
        .await
        .expect("the ordinary user's stream opens")
        .into_inner();
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        let title = format!("ordinary {rounds}");
        let request = CreateTaskRequest { title: title.clone(), ..Default::default() };
        let task = client.create_task(authed(request, &token)).await.expect("create").into_inner().task.unwrap();
        client.get_task(authed(GetTaskRequest { id: task.id }, &token)).await.expect("get");
        client.list_tasks(authed(ListTasksRequest::default(), &token)).await.expect("list");
        loop {
            let event = tokio::time::timeout(Duration::from_secs(5), stream.message())
                .await
                .expect("the ordinary user's stream delivers within 5 s")
                .expect("the ordinary user's stream stays open")
                .expect("and does not end");
            if event.task.is_some_and(|t| t.title == title) {
                break;
            }
        }
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_user_is_refused_its_excess_while_another_is_served_and_memory_stays_bounded() {
    let db = TestDatabase::new().await;
    let auth_server = testkit::spawn_auth(testkit::auth_config(&db)).await;
    let mut auth = AuthServiceClient::new(testkit::channel(auth_server.addr).await);
    let (mallory, alice) =
        (access_token(&mut auth, "mallory@example.com").await, access_token(&mut auth, "alice@example.com").await);
    let addr = free_addr();
    let max_tasks = MAX_TASKS.to_string();
    let server = ServiceProcess::start(
        env!("CARGO_BIN_EXE_task-service"),
        "TASK_ADDR",
        addr,
        &db,
        &[
            ("USER_CALLS_PER_SECOND", "100"),
            ("USER_CALLS_BURST", "400"),
            ("MAX_TASKS_PER_USER", &max_tasks),
            ("MAX_STREAMS_PER_USER", "16"),
            ("WATCH_SLOW_READER_SECONDS", "2"),
        ],
    );
    until_serving(addr).await;

    // A sync token from before any task, then the quota filled with the largest tasks, at the
    // rate the server allows.
    let mut client = connect(addr).await;
    let request = SyncTasksRequest { sync_token: String::new(), page_size: 0 };
    let early = client.sync_tasks(authed(request, &mallory)).await.unwrap().into_inner().next_sync_token;
    let mut created = 0;
    while created < MAX_TASKS {
        match client.create_task(authed(large_task(created), &mallory)).await {
            Ok(_) => created += 1,
            Err(status) => {
                assert_error(&status, Code::ResourceExhausted, "QUOTA_EXCEEDED");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await; // the burst fills up again
    let over = client.create_task(authed(large_task(created), &mallory)).await.unwrap_err();
    assert_error(&over, Code::ResourceExhausted, "QUOTA_EXCEEDED");
    assert!(over.message().contains("MAX_TASKS_PER_USER"), "{over:?}");

    let baseline = rss_bytes(server.pid());
    let mut after = Vec::new();
    let mut peak = baseline;
    for round in 0..2 {
        let stop = Arc::new(AtomicBool::new(false));
        let ordinary = tokio::spawn(ordinary_user(addr, alice.clone(), stop.clone()));
        let (pid, sampler_stop) = (server.pid(), stop.clone());
        let sampler = tokio::spawn(async move {
            let mut peak = 0;
            while !sampler_stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_bytes(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        });
        let flood = flood(addr, &mallory, &early, Duration::from_secs(4)).await;
        stop.store(true, Ordering::Relaxed);
        let rounds = ordinary.await.expect("every call of the ordinary user succeeded");
        peak = peak.max(sampler.await.unwrap());
        println!("round {round}: {flood:?}; the ordinary user made {rounds} rounds");
        assert_eq!(flood.streams_opened, 16, "MAX_STREAMS_PER_USER streams, and no more: {flood:?}");
        assert_eq!(flood.streams_refused, STREAM_ATTEMPTS - 16, "{flood:?}");
        assert!(flood.calls_refused > 0, "the call loop went past USER_CALLS_PER_SECOND: {flood:?}");
        assert!(rounds >= 10, "the ordinary user kept going: {rounds} rounds");
        // Long enough for the call rate's burst to fill again before the next flood.
        tokio::time::sleep(Duration::from_secs(4)).await;
        after.push(rss_bytes(server.pid()));
    }
    println!(
        "task-service RSS: {} MiB before, peak {} MiB, after each flood {:?} MiB",
        baseline / MIB,
        peak / MIB,
        after.iter().map(|b| b / MIB).collect::<Vec<_>>()
    );
    // 16 streams each hold at most WATCH_BUFFER_EVENTS (256) events of about 4 KB and what
    // HTTP/2 flow control lets out: a few tens of MiB. 200 unbounded streams would be hundreds.
    assert!(peak - baseline < 128 * MIB, "RSS grew by {} MiB during the flood", (peak - baseline) / MIB);
    assert!(after[1] < after[0] + 32 * MIB, "RSS grew from one flood to the next: {after:?}");
}
