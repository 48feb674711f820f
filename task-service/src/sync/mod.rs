//! Live sync (issue #4): the change feed behind SyncTasks and WatchTasks.
//!
//! - `feed`: the SQL of the feed that migration 0007's trigger keeps for every change to tasks.
//! - `token`: the opaque sync token, a position in the caller's feed.
//! - `hub`: one poll per instance every 50 ms, waking the streams of the users whose feeds moved.
//! - `watch`: one stream's task and its bounded buffer.
//!
//! A position n means "the client has every change numbered n or below". The feed keeps one
//! row per task (its latest change), so a change is sent as the task is now.

pub mod feed;
pub mod hub;
pub mod token;
pub mod watch;

use crate::service::task_message;
use feed::{Change, Position};
use todo_proto::task::v1::{ChangeType, Task};
use todo_shared::status::{FieldViolation, TASK_DOMAIN, database_error, invalid_argument, with_reason};
use token::SyncPosition;
use tonic::{Code, Status};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync_token {0}")]
    BadToken(#[from] token::SyncTokenError),
    /// Older than the tombstones still kept (or the feed started over).
    #[error("sync token expired")]
    Expired,
    /// Ahead of the feed: from another database, or one restored from a backup.
    #[error("sync token unknown")]
    Unknown,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<SyncError> for Status {
    fn from(error: SyncError) -> Status {
        match error {
            SyncError::BadToken(e) => {
                invalid_argument(TASK_DOMAIN, &[FieldViolation::new("sync_token", e.to_string())])
            }
            SyncError::Expired => with_reason(
                Code::FailedPrecondition,
                TASK_DOMAIN,
                "SYNC_TOKEN_EXPIRED",
                "changes since this sync_token are no longer kept; sync again from an empty sync_token",
            ),
            SyncError::Unknown => with_reason(
                Code::FailedPrecondition,
                TASK_DOMAIN,
                "SYNC_TOKEN_UNKNOWN",
                "this sync_token is ahead of the server's history; sync again from an empty sync_token",
            ),
            SyncError::Db(e) => database_error(TASK_DOMAIN, &e),
        }
    }
}

/// Refuses a position the feed cannot continue from: tombstones above both the client's
/// position and its floor were pruned (or the feed started over), or it is ahead of the feed.
pub fn check_position(position: SyncPosition, feed: Position) -> Result<(), SyncError> {
    if position.seq.max(position.floor) < feed.pruned_seq {
        Err(SyncError::Expired)
    } else if position.seq > feed.seq {
        Err(SyncError::Unknown)
    } else {
        Ok(())
    }
}

/// What a client at `position` learns from a change: CREATED for a task it has never seen,
/// UPDATED for one it has, DELETED with only the id (and owner); nothing for a task created and
/// deleted since `position`, which it never knew of.
pub fn change_of(change: Change, position: i64, user_id: Uuid) -> Option<(ChangeType, Task)> {
    let new_to_client = change.created_seq > position;
    match change.task {
        Some(row) => Some((if new_to_client { ChangeType::Created } else { ChangeType::Updated }, task_message(row))),
        None if new_to_client => None,
        None => Some((
            ChangeType::Deleted,
            Task { id: change.task_id.into(), user_id: user_id.to_string(), ..Task::default() },
        )),
    }
}
