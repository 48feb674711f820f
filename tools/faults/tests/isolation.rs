//! Randomized isolation: many users do random operations at once; afterwards each user's view
//! equals a model of what they did, and no one ever saw another user's task (every task a call
//! returned belongs to the caller, and another user's id is always NOT_FOUND).
//!
//! The seed is printed; `ISOLATION_SEED=<n>` replays a run, `ISOLATION_OPS=<n>` (default 40 per
//! user) makes a longer soak.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use testkit::{TestApp, authed};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{
    CreateTaskRequest, DeleteTaskRequest, GetTaskRequest, ListTasksRequest, Task, UpdateTaskRequest,
};
use tonic::Code;
use tonic::transport::Channel;

const USERS: usize = 20;

/// What a user believes they have: id -> (title, completed).
type Model = BTreeMap<i64, (String, bool)>;

/// Every task id created so far, with its owner: for probing other users' ids.
type Created = Arc<Mutex<Vec<(usize, i64)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_of_many_users_stay_each_users_own() {
    let seed: u64 = std::env::var("ISOLATION_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    let ops: usize = std::env::var("ISOLATION_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    println!("isolation seed {seed} (ISOLATION_SEED={seed} replays it), {ops} operations per user");
    let app = TestApp::spawn().await;
    let mut users = Vec::new();
    for i in 0..USERS {
        let (user, tokens) = app.sign_up(&format!("iso{i}@example.com")).await;
        users.push((user.id, tokens.access_token));
    }
    let created: Created = Arc::default();
    let mut runs = Vec::new();
    for (index, (user_id, token)) in users.into_iter().enumerate() {
        let tasks = app.tasks.clone();
        let created = created.clone();
        let rng = StdRng::seed_from_u64(seed.wrapping_add(index as u64));
        runs.push(tokio::spawn(async move {
            let model = run_user(index, &user_id, &token, tasks.clone(), rng, ops, created).await;
            // Afterwards: exactly the model, through every page.
            let listed = list_all(&mut tasks.clone(), &token, &user_id).await;
            let seen: Model = listed.into_iter().map(|t| (t.id, (t.title, t.completed))).collect();
            assert_eq!(seen, model, "user {index}: the service's view differs from the model (seed {seed})");
            model.len()
        }));
    }
    let mut total = 0;
    for run in runs {
        total += run.await.expect("a user's run panicked (see above)");
    }
    println!("{USERS} users, {total} tasks left, every view equal to its model");
}

/// Checks that `task` is the caller's; returns it.
#[track_caller]
fn own(task: Option<Task>, user_id: &str, index: usize) -> Task {
    let task = task.expect("a task in the response");
    assert_eq!(task.user_id, user_id, "user {index} was shown another user's task {}", task.id);
    task
}

async fn run_user(
    index: usize,
    user_id: &str,
    token: &str,
    mut tasks: TaskServiceClient<Channel>,
    mut rng: StdRng,
    ops: usize,
    created: Created,
) -> Model {
    let mut model = Model::new();
    for n in 0..ops {
        let mine: Vec<i64> = model.keys().copied().collect();
        let pick = |rng: &mut StdRng| mine.get(rng.gen_range(0..mine.len().max(1))).copied();
        match rng.gen_range(0..100) {
            0..=34 => {
                let title = format!("u{index} #{n} {}", rng.r#gen::<u16>());
                let request = CreateTaskRequest { title: title.clone(), ..Default::default() };
                let task =
                    own(tasks.create_task(authed(request, token)).await.unwrap().into_inner().task, user_id, index);
                model.insert(task.id, (title, false));
                created.lock().unwrap().push((index, task.id));
            }
            35..=49 => {
                if let Some(id) = pick(&mut rng) {
                    let task = own(
                        tasks.get_task(authed(GetTaskRequest { id }, token)).await.unwrap().into_inner().task,
                        user_id,
                        index,
                    );
                    assert_eq!((task.title.clone(), task.completed), model[&id]);
                }
            }
            50..=64 => {
                if let Some(id) = pick(&mut rng) {
                    let completed = rng.r#gen::<bool>();
                    let title = rng.r#gen::<bool>().then(|| format!("u{index} renamed #{n}"));
                    let request = UpdateTaskRequest {
                        id,
                        title: title.clone(),
                        completed: Some(completed),
                        ..Default::default()
                    };
                    let task =
                        own(tasks.update_task(authed(request, token)).await.unwrap().into_inner().task, user_id, index);
                    let entry = model.get_mut(&id).unwrap();
                    if let Some(title) = title {
                        entry.0 = title;
                    }
                    entry.1 = completed;
                    assert_eq!((task.title, task.completed), entry.clone());
                }
            }
            65..=74 => {
                if let Some(id) = pick(&mut rng) {
                    tasks.delete_task(authed(DeleteTaskRequest { id, ..Default::default() }, token)).await.unwrap();
                    model.remove(&id);
                }
            }
            75..=89 => {
                // Someone else's task, by id: the same NOT_FOUND as a missing one, for every RPC.
                let other = {
                    let created = created.lock().unwrap();
                    let others: Vec<i64> =
                        created.iter().filter(|(owner, _)| *owner != index).map(|(_, id)| *id).collect();
                    others.get(rng.gen_range(0..others.len().max(1))).copied()
                };
                if let Some(id) = other {
                    let err = tasks.get_task(authed(GetTaskRequest { id }, token)).await.unwrap_err();
                    assert_eq!(err.code(), Code::NotFound, "user {index} reading task {id}");
                    let update = UpdateTaskRequest { id, completed: Some(true), ..Default::default() };
                    let err = tasks.update_task(authed(update, token)).await.unwrap_err();
                    assert_eq!(err.code(), Code::NotFound, "user {index} updating task {id}");
                    let err = tasks
                        .delete_task(authed(DeleteTaskRequest { id, ..Default::default() }, token))
                        .await
                        .unwrap_err();
                    assert_eq!(err.code(), Code::NotFound, "user {index} deleting task {id}");
                }
            }
            _ => {
                let listed = list_all(&mut tasks, token, user_id).await;
                assert_eq!(listed.len(), model.len(), "user {index}: list in the middle of the run");
            }
        }
    }
    model
}

/// Every page of the caller's tasks (small pages, so paging is exercised), each checked to be theirs.
async fn list_all(tasks: &mut TaskServiceClient<Channel>, token: &str, user_id: &str) -> Vec<Task> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListTasksRequest { page_size: 3, page_token: page_token.clone(), ..Default::default() };
        let page = tasks.list_tasks(authed(request, token)).await.unwrap().into_inner();
        for task in page.tasks {
            assert_eq!(task.user_id, user_id, "a list showed another user's task {}", task.id);
            all.push(task);
        }
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}
