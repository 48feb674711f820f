//! The done-when of live sync: a client that alternates SyncTasks and WatchTasks, across restarts
//! of the service it talks to and of its own, while others write concurrently (through another
//! instance and by SQL), ends up with exactly the server's task list. Randomized: the seed is
//! printed, and CONVERGENCE_SEED replays a run.

use crate::sync::{User, user};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;
use testkit::{RunningServer, TestApp, authed, channel, spawn_task, task_config};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::*;
use tonic::transport::Channel;

type Client = TaskServiceClient<Channel>;

/// What the client keeps between its own restarts: its copy of the list and its sync token.
#[derive(Default)]
struct Replica {
    tasks: BTreeMap<i64, Task>,
    token: String,
}

impl Replica {
    fn apply(&mut self, owner: &str, change: ChangeType, task: Task) {
        assert_eq!(task.user_id, owner, "another user's task reached this client: {task:?}");
        match change {
            ChangeType::Created | ChangeType::Updated => self.tasks.insert(task.id, task),
            ChangeType::Deleted => self.tasks.remove(&task.id),
            ChangeType::Unspecified => panic!("an event without a change type"),
        };
    }

    /// SyncTasks until nothing more; false if the server was unavailable (it is restarting).
    async fn sync(&mut self, client: &Client, u: &User, page_size: i32) -> bool {
        loop {
            let request = SyncTasksRequest { sync_token: self.token.clone(), page_size };
            let page = match client.clone().sync_tasks(authed(request, &u.token)).await {
                Ok(page) => page.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable => return false,
                Err(status) => panic!("SyncTasks failed: {status:?}"),
            };
            for task in page.changed_tasks {
                self.apply(&u.id.to_string(), ChangeType::Updated, task);
            }
            for id in page.deleted_task_ids {
                self.tasks.remove(&id);
            }
            self.token = page.next_sync_token;
            if !page.has_more {
                return true;
            }
        }
    }

    /// WatchTasks for `how_long`, applying events as they come.
    async fn watch(&mut self, client: &Client, u: &User, how_long: Duration) {
        let request = WatchTasksRequest { sync_token: self.token.clone() };
        let mut stream = match client.clone().watch_tasks(authed(request, &u.token)).await {
            Ok(stream) => stream.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => return,
            Err(status) => panic!("WatchTasks failed: {status:?}"),
        };
        let deadline = tokio::time::Instant::now() + how_long;
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Err(_) => return,
                Ok(Ok(Some(event))) => {
                    let change = event.change_type();
                    self.apply(&u.id.to_string(), change, event.task.expect("events carry the task"));
                    self.token = event.sync_token;
                }
                Ok(Ok(None)) => panic!("a stream ended without a status"),
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => return,
                Ok(Err(status)) => panic!("the stream failed: {status:?}"),
            }
        }
    }
}

/// Random writes by one writer: through the API of the instance that stays up, and by SQL.
async fn writer(app_tasks: Client, pool: sqlx::PgPool, u: User, seed: u64, operations: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ids: Vec<i64> = Vec::new();
    for n in 0..operations {
        let pick = ids.get(rng.gen_range(0..ids.len().max(1))).copied();
        match (rng.gen_range(0..10), pick) {
            (0..=3, _) | (_, None) => {
                let request = CreateTaskRequest { title: format!("t{seed}-{n}"), ..Default::default() };
                let task = app_tasks.clone().create_task(authed(request, &u.token)).await.unwrap().into_inner().task;
                ids.push(task.unwrap().id);
            }
            (4..=5, Some(id)) => {
                let request = UpdateTaskRequest {
                    id,
                    title: Some(format!("u{seed}-{n}")),
                    completed: Some(rng.gen_bool(0.5)),
                    ..Default::default()
                };
                // Another writer may have deleted it.
                let _ = app_tasks.clone().update_task(authed(request, &u.token)).await;
            }
            (6, Some(id)) => {
                let _ = app_tasks
                    .clone()
                    .delete_task(authed(DeleteTaskRequest { id, etag: String::new() }, &u.token))
                    .await;
            }
            (7..=8, Some(id)) => {
                sqlx::query("UPDATE tasks SET description = $2 WHERE id = $1")
                    .bind(id as i32)
                    .bind(format!("sql{seed}-{n}"))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            (_, Some(id)) => {
                sqlx::query("DELETE FROM tasks WHERE id = $1").bind(id as i32).execute(&pool).await.unwrap();
            }
        }
        if rng.gen_bool(0.2) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(1..20))).await;
        }
    }
}

async fn server_list(client: &Client, u: &User) -> BTreeMap<i64, Task> {
    let mut all = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let request = ListTasksRequest { page_size: 1000, page_token: page_token.clone(), ..Default::default() };
        let page = client.clone().list_tasks(authed(request, &u.token)).await.unwrap().into_inner();
        all.extend(page.tasks.into_iter().map(|t| (t.id, t)));
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn a_client_alternating_sync_and_watch_ends_with_exactly_the_servers_list() {
    let seed: u64 = std::env::var("CONVERGENCE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("CONVERGENCE_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let app = TestApp::spawn().await;
    let alice = user(&app, "alice@example.com").await;
    let bob = user(&app, "bob@example.com").await;
    // Tasks from before the client's first sync.
    writer(app.tasks.clone(), app.db.pool.clone(), alice.clone(), seed ^ 1, 20).await;

    let writers: Vec<_> = [(alice.clone(), seed ^ 2), (alice.clone(), seed ^ 3), (bob.clone(), seed ^ 4)]
        .into_iter()
        .map(|(u, s)| tokio::spawn(writer(app.tasks.clone(), app.db.pool.clone(), u, s, 200)))
        .collect();

    // The client's own instance, restarted now and then.
    let mut server: RunningServer = spawn_task(task_config(&app.db)).await;
    let mut client: Client = TaskServiceClient::new(channel(server.addr).await);
    // A client without a token starts with a full sync (WatchTasks from "" is live changes only).
    let mut replica = Replica::default();
    assert!(replica.sync(&client, &alice, 7).await);
    let mut rounds = 0;
    while !writers.iter().all(|w| w.is_finished()) || rounds < 30 {
        rounds += 1;
        match rng.gen_range(0..10) {
            0..=3 => {
                replica.sync(&client, &alice, rng.gen_range(1..20)).await;
            }
            4..=7 => replica.watch(&client, &alice, Duration::from_millis(rng.gen_range(20..300))).await,
            8 => {
                // The service restarts (a stream open on it would end with UNAVAILABLE).
                server.stop().await.unwrap();
                server = spawn_task(task_config(&app.db)).await;
                client = TaskServiceClient::new(channel(server.addr).await);
            }
            _ => {
                // The client restarts: only its list and token survive.
                client = TaskServiceClient::new(channel(server.addr).await);
            }
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(replica.sync(&client, &alice, 50).await);
    let expected = server_list(&app.tasks, &alice).await;
    assert_eq!(replica.tasks.len(), expected.len(), "seed {seed}");
    assert_eq!(replica.tasks, expected, "seed {seed}: the client's list differs from the server's");
    eprintln!("converged after {rounds} rounds with {} tasks", expected.len());
}
