//! The TaskService RPCs. `RequireCaller` has verified the token before any of these runs; each
//! handler takes the `Caller` it established and passes it to the store.

use crate::domain::{Description, Etag, OrderBy, RequestId, TaskId, Title, page_size};
use crate::error::TaskError;
use crate::page_token::{self, Cursor, PageTokenError, QueryKey};
use crate::store::{self, Patch, Written};
use crate::sync::hub::Hub;
use crate::sync::token::SyncPosition;
use crate::sync::watch::{Events, WatchSettings, Watcher};
use crate::sync::{change_of, check_position, feed};
use crate::task_message::task_message;
use std::sync::Arc;
use todo_proto::task::v1::task_service_server::TaskService;
use todo_proto::task::v1::*;
use todo_shared::Caller;
use todo_shared::access::caller::Authenticator;
use todo_shared::database::Db;
use todo_shared::server::require_caller::caller_of;
use todo_shared::server::status::{FieldViolation, TASK_DOMAIN, all_valid};
use tonic::{Request, Response, Status};

pub struct TaskApi {
    pub(crate) pool: Db,
    pub(crate) authenticator: Arc<Authenticator>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) watch: WatchSettings,
    /// `MAX_TASKS_PER_USER`.
    pub(crate) max_tasks_per_user: i64,
}

fn written<T>(outcome: Written<T>) -> Result<T, TaskError> {
    match outcome {
        Written::Done(value) => Ok(value),
        Written::NotFound => Err(TaskError::NotFound),
        Written::EtagMismatch => Err(TaskError::EtagMismatch),
    }
}

impl TaskApi {
    async fn create_task(&self, caller: Caller, req: CreateTaskRequest) -> Result<CreateTaskResponse, TaskError> {
        let title = Title::parse(req.title);
        let description = Description::parse(req.description.unwrap_or_default());
        let request_id = RequestId::parse(req.request_id);
        all_valid([title.as_ref().err(), description.as_ref().err(), request_id.as_ref().err()])?;
        let (title, description, request_id) = (title?, description?, request_id?);
        let max = self.max_tasks_per_user;
        let row = match request_id {
            Some(request_id) => store::insert_once(&self.pool, &caller, &request_id, &title, &description, max).await?,
            None => store::insert(&self.pool, &caller, &title, &description, max).await?,
        };
        let row = row.ok_or(TaskError::TooManyTasks { user_id: caller.user_id, max })?;
        Ok(CreateTaskResponse { task: Some(task_message(row)) })
    }

    async fn get_task(&self, caller: Caller, req: GetTaskRequest) -> Result<GetTaskResponse, TaskError> {
        let TaskId::Valid(id) = TaskId::parse(req.id)? else {
            return Err(TaskError::NotFound);
        };
        let row = store::get(&self.pool, &caller, id).await?.ok_or(TaskError::NotFound)?;
        Ok(GetTaskResponse { task: Some(task_message(row)) })
    }

    async fn list_tasks(&self, caller: Caller, req: ListTasksRequest) -> Result<ListTasksResponse, TaskError> {
        let size = page_size(req.page_size);
        let order = OrderBy::parse(&req.order_by);
        all_valid([size.as_ref().err(), order.as_ref().err()])?;
        let (size, order) = (size?, order?);
        let key = QueryKey { user_id: caller.user_id, completed: req.completed, order };
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(
                page_token::decode(&key, token)
                    .map_err(|e: PageTokenError| FieldViolation::new("page_token", e.to_string()))?,
            ),
        };
        // One row more than asked tells whether another page follows.
        let mut rows = store::list(&self.pool, &caller, req.completed, order, after, size + 1).await?;
        let next_page_token = if rows.len() as i64 > size {
            rows.truncate(size as usize);
            let last = rows.last().expect("size is at least 1, so a truncated page has a last row");
            let time = match order {
                OrderBy::CreateTimeAsc | OrderBy::CreateTimeDesc => last.created_at,
                OrderBy::UpdateTimeAsc | OrderBy::UpdateTimeDesc => last.updated_at,
            };
            // Rows always get their times from the column defaults and trigger; a NULL could only
            // come from a hand-written row, which then ends the listing rather than loop.
            time.map(|time| page_token::encode(&key, Cursor { time, id: last.id })).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListTasksResponse { tasks: rows.into_iter().map(task_message).collect(), next_page_token })
    }

    async fn update_task(&self, caller: Caller, req: UpdateTaskRequest) -> Result<UpdateTaskResponse, TaskError> {
        let id = TaskId::parse(req.id);
        let title = req.title.map(Title::parse).transpose();
        let description = req.description.map(Description::parse).transpose();
        let etag = Etag::parse(&req.etag);
        // Nothing to update: each of the three optional fields is named.
        let nothing_to_do = title.as_ref().is_ok_and(Option::is_none)
            && description.as_ref().is_ok_and(Option::is_none)
            && req.completed.is_none();
        let absent = |field| {
            nothing_to_do.then(|| FieldViolation::new(field, "give at least one of title, description, completed"))
        };
        let (no_title, no_description, no_completed) = (absent("title"), absent("description"), absent("completed"));
        all_valid([
            id.as_ref().err(),
            title.as_ref().err(),
            description.as_ref().err(),
            etag.as_ref().err(),
            no_title.as_ref(),
            no_description.as_ref(),
            no_completed.as_ref(),
        ])?;
        let TaskId::Valid(id) = id? else {
            return Err(TaskError::NotFound);
        };
        let patch = Patch { title: title?, description: description?, completed: req.completed };
        let row = written(store::update(&self.pool, &caller, id, &patch, etag?).await?)?;
        Ok(UpdateTaskResponse { task: Some(task_message(row)) })
    }

    async fn delete_task(&self, caller: Caller, req: DeleteTaskRequest) -> Result<DeleteTaskResponse, TaskError> {
        let id = TaskId::parse(req.id);
        let etag = Etag::parse(&req.etag);
        all_valid([id.as_ref().err(), etag.as_ref().err()])?;
        let TaskId::Valid(id) = id? else {
            return Err(TaskError::NotFound);
        };
        written(store::delete(&self.pool, &caller, id, etag?).await?)?;
        Ok(DeleteTaskResponse {})
    }

    async fn sync_tasks(&self, caller: Caller, req: SyncTasksRequest) -> Result<SyncTasksResponse, TaskError> {
        let size = page_size(req.page_size);
        let start = crate::sync::token::decode(caller.user_id, &req.sync_token)
            .map_err(|e| FieldViolation::new("sync_token", e.to_string()));
        all_valid([size.as_ref().err(), start.as_ref().err()])?;
        let (size, start) = (size?, start?);
        // One row more than asked tells whether more follow.
        let after = start.map_or(0, |p| p.seq);
        let (feed, mut changes) = feed::changes_after(&self.pool, &caller, after, size + 1).await?;
        // "" is the start, which is always there; tombstones pruned before it do not concern
        // this client (its floor).
        let start = match start {
            Some(position) => {
                check_position(position, feed)?;
                position
            }
            None => SyncPosition { seq: 0, floor: feed.pruned_seq },
        };
        let has_more = changes.len() as i64 > size;
        changes.truncate(size as usize);
        // Mid-way, the last change sent; at the end, the feed's position in the same snapshot
        // (everything up to it has been sent or did not concern the client).
        let seq = if has_more { changes.last().map_or(start.seq, |c| c.seq) } else { feed.seq.max(start.seq) };
        let mut response = SyncTasksResponse {
            next_sync_token: crate::sync::token::encode(caller.user_id, SyncPosition { seq, ..start }),
            has_more,
            ..SyncTasksResponse::default()
        };
        for change in changes {
            match change_of(change, start.seq, caller.user_id) {
                Some((ChangeType::Deleted, task)) => response.deleted_task_ids.push(task.id),
                Some((_, task)) => response.changed_tasks.push(task),
                None => {}
            }
        }
        Ok(response)
    }

    async fn watch_tasks(
        &self,
        caller: Caller,
        authorization: String,
        req: WatchTasksRequest,
    ) -> Result<Events, TaskError> {
        let start = crate::sync::token::decode(caller.user_id, &req.sync_token)
            .map_err(|e| FieldViolation::new("sync_token", e.to_string()))?;
        // Subscribed before the feed is read: a change committed in between wakes the stream.
        let subscription = self
            .hub
            .subscribe(caller.user_id, self.watch.max_streams_per_user)
            .ok_or(TaskError::TooManyStreams { user_id: caller.user_id, max: self.watch.max_streams_per_user })?;
        let open = self.hub.open_streams.enter();
        let feed = feed::position(&self.pool, &caller).await?;
        let position = match start {
            Some(position) => {
                check_position(position, feed)?;
                position
            }
            // "": only what comes from now on.
            None => SyncPosition { seq: feed.seq, floor: feed.pruned_seq },
        };
        let watcher = Watcher {
            pool: self.pool.clone(),
            authenticator: self.authenticator.clone(),
            authorization,
            caller,
            subscription,
            settings: self.watch,
        };
        Ok(watcher.start(position, open))
    }

    async fn get_task_stats(&self, caller: Caller) -> Result<GetTaskStatsResponse, TaskError> {
        let (total, completed) = feed::stats(&self.pool, &caller).await?;
        Ok(GetTaskStatsResponse { total, completed })
    }
}

#[tonic::async_trait]
impl TaskService for TaskApi {
    async fn create_task(&self, request: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        let caller = caller_of(&request, TASK_DOMAIN)?;
        Ok(Response::new(TaskApi::create_task(self, caller, request.into_inner()).await?))
    }

    async fn get_task(&self, request: Request<GetTaskRequest>) -> Result<Response<GetTaskResponse>, Status> {
        let caller = caller_of(&request, TASK_DOMAIN)?;
        Ok(Response::new(TaskApi::get_task(self, caller, request.into_inner()).await?))
    }

    async fn list_tasks(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        let caller = caller_of(&request, TASK_DOMAIN)?;
        Ok(Response::new(TaskApi::list_tasks(self, caller, request.into_inner()).await?))
    }

    async fn update_task(&self, request: Request<UpdateTaskRequest>) -> Result<Response<UpdateTaskResponse>, Status> {
        let caller = caller_of(&request, TASK_DOMAIN)?;
        Ok(Response::new(TaskApi::update_task(self, caller, request.into_inner()).await?))
    }

    async fn delete_task(&self, request: Request<DeleteTaskRequest>) -> Result<Response<DeleteTaskResponse>, Status> {
        let caller = caller_of(&request, TASK_DOMAIN)?;
        Ok(Response::new(TaskApi::delete_task(self, caller, request.into_inner()).await?))
    }

    type WatchTasksStream = Events;

    async fn watch_tasks(&self, request: Request<WatchTasksRequest>) -> Result<Response<Events>, Status> {
        let caller = caller_of(&request, TASK_DOMAIN)?;
        // Kept to check the token again before each read of the feed.
        let authorization =
            request.metadata().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        Ok(Response::new(TaskApi::watch_tasks(self, caller, authorization, request.into_inner()).await?))
    }

    async fn sync_tasks(&self, request: Request<SyncTasksRequest>) -> Result<Response<SyncTasksResponse>, Status> {
        let caller = caller_of(&request, TASK_DOMAIN)?;
        Ok(Response::new(TaskApi::sync_tasks(self, caller, request.into_inner()).await?))
    }

    async fn get_task_stats(
        &self,
        request: Request<GetTaskStatsRequest>,
    ) -> Result<Response<GetTaskStatsResponse>, Status> {
        let caller = caller_of(&request, TASK_DOMAIN)?;
        Ok(Response::new(TaskApi::get_task_stats(self, caller).await?))
    }
}
