//! The errors of task-service and the one place that turns them into gRPC statuses.

use todo_shared::status::{FieldViolation, TASK_DOMAIN, database_error, invalid_argument, with_reason};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("task not found")]
    NotFound,
    #[error("etag mismatch")]
    EtagMismatch,
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
            TaskError::Db(e) => database_error(TASK_DOMAIN, &e),
        }
    }
}
