//! The errors of task-service and the one place that turns them into gRPC statuses.

use todo_shared::status::{FieldViolation, TASK_DOMAIN, database_error, invalid_argument, with_reason};
use todo_shared::token::TokenError;
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
            TaskError::Db(e) => match todo_shared::db::violated_constraint(&e) {
                // The verified token belongs to an account deleted since it was issued.
                Some("fk_tasks_user_id" | "fk_task_create_requests_user_id") => {
                    TokenError::Revoked.into_status(TASK_DOMAIN)
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
