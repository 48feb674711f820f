//! The errors of auth-service and the one place that turns them into gRPC statuses.

use crate::passwords::PasswordError;
use todo_shared::access::token::TokenError;
use todo_shared::server::status::{
    AUTH_DOMAIN, FieldViolation, database_error, internal, invalid_argument, with_reason, with_retry,
};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("email already registered")]
    EmailTaken,
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("refresh token reused")]
    RefreshTokenReused,
    /// The session is past its lifetime (`idle`: past its inactivity timeout): UNAUTHENTICATED
    /// `SESSION_EXPIRED`; it is revoked, and the user logs in again.
    #[error("session expired")]
    SessionExpired { idle: bool },
    /// RevokeSession on an id that is not one of the caller's live sessions: NOT_FOUND
    /// `SESSION_NOT_FOUND`, whoever's it is (as for tasks).
    #[error("session not found")]
    SessionNotFound,
    #[error("too many failed attempts")]
    TooManyAttempts { retry_after: std::time::Duration },
    /// This address signed up `SIGNUP_MAX_PER_ADDRESS` times in the window: RESOURCE_EXHAUSTED
    /// `TOO_MANY_ATTEMPTS` with a RetryInfo, as for logins.
    #[error("too many sign-ups")]
    TooManySignUps { retry_after: std::time::Duration },
    #[error("password checks overloaded")]
    Overloaded,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<FieldViolation> for AuthError {
    fn from(v: FieldViolation) -> Self {
        AuthError::InvalidArgument(vec![v])
    }
}

impl From<Vec<FieldViolation>> for AuthError {
    fn from(violations: Vec<FieldViolation>) -> Self {
        AuthError::InvalidArgument(violations)
    }
}

impl From<PasswordError> for AuthError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Overloaded => AuthError::Overloaded,
            PasswordError::Failed(msg) => AuthError::Internal(anyhow::anyhow!(msg)),
        }
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Status {
        match error {
            AuthError::InvalidArgument(violations) => invalid_argument(AUTH_DOMAIN, &violations),
            AuthError::EmailTaken => with_reason(
                Code::AlreadyExists,
                AUTH_DOMAIN,
                "EMAIL_TAKEN",
                "an account with this email already exists",
            ),
            AuthError::InvalidCredentials => {
                with_reason(Code::Unauthenticated, AUTH_DOMAIN, "INVALID_CREDENTIALS", "invalid email or password")
            }
            AuthError::Token(e) => todo_shared::server::status::token_error(AUTH_DOMAIN, e),
            AuthError::RefreshTokenReused => with_reason(
                Code::Unauthenticated,
                AUTH_DOMAIN,
                "REFRESH_TOKEN_REUSED",
                "this refresh token was already used; the session has been revoked, log in again",
            ),
            AuthError::SessionExpired { idle } => with_reason(
                Code::Unauthenticated,
                AUTH_DOMAIN,
                "SESSION_EXPIRED",
                if idle {
                    "the session was not used for longer than its inactivity timeout; log in again"
                } else {
                    "the session has reached its maximum lifetime; log in again"
                },
            ),
            AuthError::SessionNotFound => with_reason(
                Code::NotFound,
                AUTH_DOMAIN,
                "SESSION_NOT_FOUND",
                "no live session with this id among yours",
            ),
            AuthError::TooManyAttempts { retry_after } => with_retry(
                Code::ResourceExhausted,
                AUTH_DOMAIN,
                "TOO_MANY_ATTEMPTS",
                format!("too many failed attempts; retry in {} seconds", retry_after.as_secs().max(1)),
                retry_after,
            ),
            AuthError::TooManySignUps { retry_after } => with_retry(
                Code::ResourceExhausted,
                AUTH_DOMAIN,
                "TOO_MANY_ATTEMPTS",
                format!("too many sign-ups from this address; retry in {} seconds", retry_after.as_secs().max(1)),
                retry_after,
            ),
            AuthError::Overloaded => with_retry(
                Code::ResourceExhausted,
                AUTH_DOMAIN,
                "OVERLOADED",
                "too many password checks in progress; retry shortly",
                std::time::Duration::from_secs(1),
            ),
            AuthError::Db(e) => database_error(AUTH_DOMAIN, &e),
            AuthError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                internal(AUTH_DOMAIN)
            }
        }
    }
}

/// A unique violation on either email constraint means the address is taken.
pub fn email_taken_or(error: sqlx::Error) -> AuthError {
    match todo_shared::database::violated_constraint(&error) {
        Some("users_email_key" | "uq_users_email_lower") => AuthError::EmailTaken,
        _ => AuthError::Db(error),
    }
}
