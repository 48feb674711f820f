//! Live sync (issue #4): the change feed behind SyncTasks and WatchTasks.
//!
//! - `feed`: the SQL of the feed that the triggers of migrations 0007 and 0011 keep for every change to tasks.
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

use crate::error::TaskError;
use crate::task_message::task_message;
use feed::{Change, Position};
use todo_proto::task::v1::{ChangeType, Task};
use token::SyncPosition;
use uuid::Uuid;

/// Refuses a position the feed cannot continue from: tombstones above both the client's
/// position and its floor were pruned (or the feed started over), or it is ahead of the feed.
pub fn check_position(position: SyncPosition, feed: Position) -> Result<(), TaskError> {
    if position.seq.max(position.floor) < feed.pruned_seq {
        Err(TaskError::SyncTokenExpired)
    } else if position.seq > feed.seq {
        Err(TaskError::SyncTokenUnknown)
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
