//! The callers: the connections and tokens the load's workers share, and the task-service loads
//! (list, get, create, update) that run against the real service and against the floor alike.

use crate::floor;
use crate::load::{self, LoadResult, Timing};
use crate::seed;
use std::sync::Arc;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, GetTaskRequest, ListTasksRequest, UpdateTaskRequest};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Calls in flight, as in the targets ("p99 under 10 ms at 32 in flight").
pub const CONCURRENCY: usize = 32;
/// HTTP/2 connections the callers share.
const CONNECTIONS: usize = 4;
/// Users of the small data set, each with 200 tasks.
pub const USERS: i64 = 100;

/// What the callers share: connections, and a token per user.
pub struct Clients {
    /// Clients of task-service (or of the floor), one per connection.
    pub tasks: Vec<TaskServiceClient<Channel>>,
    /// Clients of auth-service, one per connection.
    pub auth: Vec<AuthServiceClient<Channel>>,
    /// `authorization` metadata and raw token of user n at index n-1.
    pub bearer: Vec<MetadataValue<tonic::metadata::Ascii>>,
    /// The raw access token of user n at index n-1.
    pub tokens: Vec<String>,
}

impl Clients {
    /// The task client of `worker`'s connection.
    pub fn task(&self, worker: usize) -> TaskServiceClient<Channel> {
        self.tasks[worker % self.tasks.len()].clone()
    }

    /// The auth client of `worker`'s connection.
    pub fn auth(&self, worker: usize) -> AuthServiceClient<Channel> {
        self.auth[worker % self.auth.len()].clone()
    }

    /// `message` with user `user`'s bearer token.
    pub fn request<T>(&self, user: i64, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.bearer[(user - 1) as usize].clone());
        request
    }
}

/// `CONNECTIONS` HTTP/2 connections to `addr` (TCP_NODELAY).
pub async fn channels(addr: std::net::SocketAddr) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        out.push(Channel::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?);
    }
    Ok(out)
}

/// A cheap deterministic spread over users: worker and iteration mixed.
pub fn pick(worker: usize, iteration: u64, n: i64) -> i64 {
    let x = (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ iteration.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (x.rotate_left(17) % n as u64) as i64 + 1
}

/// A failed call's code and message, as the output's `first_error` shows it.
pub fn status_text(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// One real reply of each RPC the floor answers, for user 1 (whose list stays a full page).
pub async fn canned_replies(clients: &Clients) -> anyhow::Result<floor::CannedReplies> {
    let mut tasks = clients.task(0);
    let get = tasks.get_task(clients.request(1, GetTaskRequest { id: 1 })).await?.into_inner();
    let list = ListTasksRequest { page_size: 50, ..Default::default() };
    let list = tasks.list_tasks(clients.request(1, list)).await?.into_inner();
    let create = CreateTaskRequest { title: "bench task".into(), ..Default::default() };
    let create = tasks.create_task(clients.request(1, create)).await?.into_inner();
    Ok(floor::CannedReplies { get, list, create })
}

/// The load of the list, get, create or update scenario on `c`'s task connections (the real
/// task-service, or the floor): 32 callers, a user picked at random per call.
pub async fn task_load(scenario: &str, c: Arc<Clients>, timing: Timing, probe: load::CpuProbe) -> LoadResult {
    match scenario {
        "list" => {
            load::run(CONCURRENCY, timing, probe, move |w, i| {
                let (c, user) = (c.clone(), pick(w, i, USERS));
                async move {
                    let request = ListTasksRequest { page_size: 50, ..Default::default() };
                    match c.task(w).list_tasks(c.request(user, request)).await {
                        Ok(r) if r.get_ref().tasks.len() == 50 => Ok(()),
                        Ok(r) => Err(format!("expected 50 tasks, got {}", r.get_ref().tasks.len())),
                        Err(s) => Err(status_text(s)),
                    }
                }
            })
            .await
        }
        "get" => {
            load::run(CONCURRENCY, timing, probe, move |w, i| {
                let (c, user) = (c.clone(), pick(w, i, USERS));
                let id = (user - 1) * seed::TASKS_PER_USER + (i as i64 % seed::TASKS_PER_USER) + 1;
                async move {
                    c.task(w).get_task(c.request(user, GetTaskRequest { id })).await.map(|_| ()).map_err(status_text)
                }
            })
            .await
        }
        "create" => {
            load::run(CONCURRENCY, timing, probe, move |w, i| {
                let (c, user) = (c.clone(), pick(w, i, USERS));
                async move {
                    let request = CreateTaskRequest { title: "bench task".into(), ..Default::default() };
                    c.task(w).create_task(c.request(user, request)).await.map(|_| ()).map_err(status_text)
                }
            })
            .await
        }
        "update" => {
            load::run(CONCURRENCY, timing, probe, move |w, i| {
                let (c, user) = (c.clone(), pick(w, i, USERS));
                let id = (user - 1) * seed::TASKS_PER_USER + (i as i64 % seed::TASKS_PER_USER) + 1;
                async move {
                    let request = UpdateTaskRequest { id, completed: Some(i % 2 == 0), ..Default::default() };
                    c.task(w).update_task(c.request(user, request)).await.map(|_| ()).map_err(status_text)
                }
            })
            .await
        }
        other => unreachable!("no task load named {other}"),
    }
}
