//! The errors of task-service, its RPCs and its streams alike, and the one place that turns
//! them into gRPC statuses (code, ErrorInfo reason in `todo.task`, BadRequest for fields).

use todo_shared::access::token::TokenError;
use todo_shared::server::status::{
    FieldViolation, TASK_DOMAIN, database_error, invalid_argument, quota_exceeded, token_error, with_reason,
};
use tonic::{Code, Status};

/// Everything a call or a stream of task-service can end with, short of success.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// Fields of the request are wrong: INVALID_ARGUMENT with a BadRequest naming each.
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    /// A missing task, or another user's: NOT_FOUND `TASK_NOT_FOUND` (never a hint which).
    #[error("task not found")]
    NotFound,
    /// The etag sent is no longer the task's: ABORTED `ETAG_MISMATCH`.
    #[error("etag mismatch")]
    EtagMismatch,
    /// A sync token older than the tombstones still kept (or the feed started over):
    /// FAILED_PRECONDITION `SYNC_TOKEN_EXPIRED`.
    #[error("sync token expired")]
    SyncTokenExpired,
    /// A sync token ahead of the feed (another database, or one restored from a backup):
    /// FAILED_PRECONDITION `SYNC_TOKEN_UNKNOWN`.
    #[error("sync token unknown")]
    SyncTokenUnknown,
    /// A stream's token no longer verifies, or its session ended: UNAUTHENTICATED with the
    /// token's reason (UNAVAILABLE if its key could not be looked up).
    #[error("access token refused")]
    Token(#[from] TokenError),
    /// The server is stopping: a stream ends with UNAVAILABLE `SHUTTING_DOWN`.
    #[error("shutting down")]
    ShuttingDown,
    /// The caller already has `max` tasks: RESOURCE_EXHAUSTED `QUOTA_EXCEEDED` with a QuotaFailure.
    #[error("too many tasks")]
    TooManyTasks {
        /// The caller.
        user_id: uuid::Uuid,
        /// `MAX_TASKS_PER_USER`.
        max: i64,
    },
    /// The caller already has `max` WatchTasks streams open on this instance: RESOURCE_EXHAUSTED
    /// `QUOTA_EXCEEDED` with a QuotaFailure.
    #[error("too many streams")]
    TooManyStreams {
        /// The caller.
        user_id: uuid::Uuid,
        /// `MAX_STREAMS_PER_USER`.
        max: usize,
    },
    /// A stream's reader fell `buffer` events behind for `waited`: RESOURCE_EXHAUSTED
    /// `SLOW_READER`.
    #[error("slow reader")]
    SlowReader {
        /// Events the stream held for the reader (`WATCH_BUFFER_EVENTS`).
        buffer: usize,
        /// How long the buffer stayed full.
        waited: std::time::Duration,
    },
    /// The database failed: UNAVAILABLE when it cannot be reached, DEADLINE_EXCEEDED past the
    /// call's deadline, else INTERNAL (constraint violations of a deleted account or a CHECK
    /// are mapped to what they mean).
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<FieldViolation> for TaskError {
    fn from(v: FieldViolation) -> Self {
        TaskError::InvalidArgument(vec![v])
    }
}

impl From<Vec<FieldViolation>> for TaskError {
    fn from(violations: Vec<FieldViolation>) -> Self {
        TaskError::InvalidArgument(violations)
    }
}

impl From<TaskError> for Status {
    fn from(error: TaskError) -> Status {
        match error {
            TaskError::InvalidArgument(violations) => invalid_argument(TASK_DOMAIN, &violations),
            // The same answer for a missing task and another user's: no hint that it exists.
            TaskError::NotFound => with_reason(Code::NotFound, TASK_DOMAIN, "TASK_NOT_FOUND", "task not found"),
            TaskError::EtagMismatch => with_reason(
                Code::Aborted,
                TASK_DOMAIN,
                "ETAG_MISMATCH",
                "the task changed since this etag was read; get it again and retry",
            ),
            TaskError::SyncTokenExpired => with_reason(
                Code::FailedPrecondition,
                TASK_DOMAIN,
                "SYNC_TOKEN_EXPIRED",
                "changes since this sync_token are no longer kept; sync again from an empty sync_token",
            ),
            TaskError::SyncTokenUnknown => with_reason(
                Code::FailedPrecondition,
                TASK_DOMAIN,
                "SYNC_TOKEN_UNKNOWN",
                "this sync_token is ahead of the server's history; sync again from an empty sync_token",
            ),
            TaskError::Token(e) => token_error(TASK_DOMAIN, e),
            TaskError::ShuttingDown => with_reason(
                Code::Unavailable,
                TASK_DOMAIN,
                "SHUTTING_DOWN",
                "the server is stopping; watch again with the last sync_token",
            ),
            TaskError::TooManyTasks { user_id, max } => quota_exceeded(
                TASK_DOMAIN,
                format!("user:{user_id}"),
                format!("at most {max} tasks per user (MAX_TASKS_PER_USER); delete some first"),
                None,
            ),
            TaskError::TooManyStreams { user_id, max } => quota_exceeded(
                TASK_DOMAIN,
                format!("user:{user_id}"),
                format!(
                    "at most {max} WatchTasks streams per user are open at once on one server \
                     (MAX_STREAMS_PER_USER); close one first"
                ),
                None,
            ),
            TaskError::SlowReader { buffer, waited } => with_reason(
                Code::ResourceExhausted,
                TASK_DOMAIN,
                "SLOW_READER",
                format!(
                    "the stream was {} events ahead of the reader for {:?}; watch again with the last sync_token",
                    buffer, waited
                ),
            ),
            TaskError::Db(e) => match todo_shared::database::violated_constraint(&e) {
                // The verified token belongs to an account deleted since it was issued.
                Some("fk_tasks_user_id" | "fk_task_create_requests_user_id") => {
                    token_error(TASK_DOMAIN, TokenError::Revoked)
                }
                // Validation at the edge mirrors these CHECKs; this is the backstop.
                Some("chk_tasks_title_length") => {
                    invalid_argument(TASK_DOMAIN, &[FieldViolation::new("title", "must be 1 to 255 characters")])
                }
                Some("chk_tasks_description_length") => invalid_argument(
                    TASK_DOMAIN,
                    &[FieldViolation::new("description", "must be at most 1000 characters")],
                ),
                _ => database_error(TASK_DOMAIN, &e),
            },
        }
    }
}
