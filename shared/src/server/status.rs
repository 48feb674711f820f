//! Building gRPC statuses the way the contract promises: a canonical code, a
//! `google.rpc.ErrorInfo` with an UPPER_SNAKE_CASE reason, and `google.rpc.BadRequest` for
//! invalid fields. Internal causes are logged here and never put into a status.

use std::collections::HashMap;
use std::time::Duration;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of each service.
pub const AUTH_DOMAIN: &str = "todo.auth";
/// The ErrorInfo domain of task-service's errors.
pub const TASK_DOMAIN: &str = "todo.task";

/// A status with an ErrorInfo.
pub fn with_reason(code: Code, domain: &str, reason: &str, message: impl Into<String>) -> Status {
    let details = ErrorDetails::with_error_info(reason, domain, HashMap::<String, String>::new());
    Status::with_error_details(code, message, details)
}

/// A status with an ErrorInfo and a RetryInfo telling the client when to try again.
pub fn with_retry(code: Code, domain: &str, reason: &str, message: impl Into<String>, retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, domain, HashMap::<String, String>::new());
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(code, message, details)
}

/// RESOURCE_EXHAUSTED `QUOTA_EXCEEDED` with a `google.rpc.QuotaFailure` naming what is limited:
/// `subject` is whose quota (`user:<id>`), `description` the limit and its setting, in words;
/// with `retry_after`, a `google.rpc.RetryInfo` too (a rate, which frees itself in time).
pub fn quota_exceeded(domain: &str, subject: String, description: String, retry_after: Option<Duration>) -> Status {
    let mut details = ErrorDetails::with_error_info("QUOTA_EXCEEDED", domain, HashMap::<String, String>::new());
    details.set_quota_failure(vec![tonic_types::QuotaViolation::new(subject, description.clone())]);
    if let Some(retry_after) = retry_after {
        details.set_retry_info(Some(retry_after));
    }
    Status::with_error_details(Code::ResourceExhausted, description, details)
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The request field, as named in the .proto (`new_password`).
    pub field: &'static str,
    /// What is wrong with it; never its value.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self { field, description: description.into() }
    }
}

/// Gathers the violations of several parsed fields, so that a client learns of every bad field
/// in one answer. Pass `parsed.as_ref().err()` for each field.
pub fn all_valid<const N: usize>(errors: [Option<&FieldViolation>; N]) -> Result<(), Vec<FieldViolation>> {
    let violations: Vec<FieldViolation> = errors.into_iter().flatten().cloned().collect();
    if violations.is_empty() { Ok(()) } else { Err(violations) }
}

/// INVALID_ARGUMENT naming every bad field, with reason INVALID_ARGUMENT.
pub fn invalid_argument(domain: &str, violations: &[FieldViolation]) -> Status {
    let message = violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ");
    let mut details = ErrorDetails::with_error_info("INVALID_ARGUMENT", domain, HashMap::<String, String>::new());
    for v in violations {
        details.add_bad_request_violation(v.field, v.description.clone());
    }
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// Maps a database error: an outage is UNAVAILABLE (retryable), anything else INTERNAL with a
/// generic message. The cause is logged with its chain, never sent.
pub fn database_error(domain: &str, error: &sqlx::Error) -> Status {
    if crate::database::is_deadline(error) {
        tracing::warn!(error = %error, "statement cancelled: the call ran out of time");
        with_reason(Code::DeadlineExceeded, domain, "DEADLINE_EXCEEDED", "the call ran out of time")
    } else if crate::database::is_unavailable(error) {
        tracing::warn!(error = %error, "database unavailable");
        with_reason(Code::Unavailable, domain, "DATABASE_UNAVAILABLE", "the database is unavailable; retry later")
    } else {
        tracing::error!(error = ?error, "database error");
        internal(domain)
    }
}

/// INTERNAL without any detail of the cause (which the caller has already logged).
pub fn internal(domain: &str) -> Status {
    with_reason(Code::Internal, domain, "INTERNAL", "internal error")
}

/// A refused token as the status the client gets: UNAUTHENTICATED with the token's reason, or
/// UNAVAILABLE when its key could not be looked up.
pub fn token_error(domain: &str, error: crate::access::token::TokenError) -> Status {
    use crate::access::token::TokenError;
    match error {
        TokenError::Database(e) => database_error(domain, &e),
        other => with_reason(Code::Unauthenticated, domain, other.reason(), other.to_string()),
    }
}
