//! The floor: a bare tonic server answering TaskService calls with canned replies, copied from
//! the real task-service's replies so that they are the same size. It does no work a reply does
//! not need (no token check, no database, no layers), so its CPU per call is what tonic, hyper
//! and the load generator's traffic cost on this machine: what the services' CPU per call is
//! read against (`service_cpu_vs_floor`).
//!
//! It runs as its own process (`bench floor-server`, hidden), so /proc gives its CPU alone.

use anyhow::Context;
use prost::Message;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use todo_proto::task::v1::task_service_server::{TaskService, TaskServiceServer};
use todo_proto::task::v1::*;
use todo_shared::server::call_limits::{MAX_CONCURRENT_STREAMS_PER_CONNECTION, MAX_REQUEST_BYTES};
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The replies the floor gives: real task-service replies, recorded once before the floor runs.
#[derive(Clone)]
pub struct CannedReplies {
    /// A GetTask reply (one task; UpdateTask is answered with the same task).
    pub get: GetTaskResponse,
    /// A ListTasks reply: a full page of 50 tasks with a next page token.
    pub list: ListTasksResponse,
    /// A CreateTask reply of the create scenario's task ("bench task").
    pub create: CreateTaskResponse,
}

impl CannedReplies {
    /// Writes the replies, protobuf-encoded, into `dir` (for the floor's process to read).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("get.bin"), self.get.encode_to_vec())?;
        std::fs::write(dir.join("list.bin"), self.list.encode_to_vec())?;
        std::fs::write(dir.join("create.bin"), self.create.encode_to_vec())?;
        Ok(())
    }

    fn read(dir: &Path) -> anyhow::Result<Self> {
        let bytes = |name: &str| std::fs::read(dir.join(name)).with_context(|| format!("reading {name}"));
        Ok(Self {
            get: GetTaskResponse::decode(bytes("get.bin")?.as_slice())?,
            list: ListTasksResponse::decode(bytes("list.bin")?.as_slice())?,
            create: CreateTaskResponse::decode(bytes("create.bin")?.as_slice())?,
        })
    }

    /// Encoded size in bytes of the GetTask, ListTasks and CreateTask replies.
    pub fn sizes(&self) -> [usize; 3] {
        [self.get.encoded_len(), self.list.encoded_len(), self.create.encoded_len()]
    }
}

/// The TaskService of the floor. A reply is cloned per call, as the real service builds one.
struct Floor(CannedReplies);

fn not_in_floor() -> Status {
    Status::unimplemented("the floor answers GetTask, ListTasks, CreateTask and UpdateTask only")
}

#[tonic::async_trait]
impl TaskService for Floor {
    async fn create_task(&self, _: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        Ok(Response::new(self.0.create.clone()))
    }

    async fn get_task(&self, _: Request<GetTaskRequest>) -> Result<Response<GetTaskResponse>, Status> {
        Ok(Response::new(self.0.get.clone()))
    }

    async fn list_tasks(&self, _: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        Ok(Response::new(self.0.list.clone()))
    }

    async fn update_task(&self, _: Request<UpdateTaskRequest>) -> Result<Response<UpdateTaskResponse>, Status> {
        Ok(Response::new(UpdateTaskResponse { task: self.0.get.task.clone() }))
    }

    async fn delete_task(&self, _: Request<DeleteTaskRequest>) -> Result<Response<DeleteTaskResponse>, Status> {
        Err(not_in_floor())
    }

    type WatchTasksStream = tokio_stream::Empty<Result<WatchTasksResponse, Status>>;

    async fn watch_tasks(&self, _: Request<WatchTasksRequest>) -> Result<Response<Self::WatchTasksStream>, Status> {
        Err(not_in_floor())
    }

    async fn sync_tasks(&self, _: Request<SyncTasksRequest>) -> Result<Response<SyncTasksResponse>, Status> {
        Err(not_in_floor())
    }

    async fn get_task_stats(&self, _: Request<GetTaskStatsRequest>) -> Result<Response<GetTaskStatsResponse>, Status> {
        Err(not_in_floor())
    }
}

/// `bench floor-server --addr A --replies DIR`: serves the replies in `replies` (written by
/// [`CannedReplies::write`]) on `addr` until the process is killed. The transport is the
/// services' (`todo_shared::server::serve`): HTTP/2 without TLS (HTTP/1 accepted), TCP_NODELAY,
/// the same stream limits and keep-alives; a health service, so it is started like them.
pub async fn serve(addr: SocketAddr, replies: &Path) -> anyhow::Result<()> {
    let replies = CannedReplies::read(replies)?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(Duration::from_secs(60)));
    Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS_PER_CONNECTION)
        .concurrency_limit_per_connection(MAX_CONCURRENT_STREAMS_PER_CONNECTION as usize)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(health)
        .add_service(TaskServiceServer::new(Floor(replies)).max_decoding_message_size(MAX_REQUEST_BYTES))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
