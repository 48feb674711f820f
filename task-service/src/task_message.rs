//! The API's `Task` message made from a stored row: one place for the fields' formats (the id
//! as text, times as `google.protobuf.Timestamp`, the etag as `Etag` writes it), shared by the
//! RPCs and the sync streams.

use crate::domain::Etag;
use crate::store::TaskRow;
use todo_proto::task::v1::Task;
use todo_shared::server::proto_time::optional_timestamp;

/// `row` as the API shows it.
pub fn task_message(row: TaskRow) -> Task {
    Task {
        id: row.id.into(),
        user_id: row.user_id.to_string(),
        title: row.title,
        description: row.description,
        completed: row.completed,
        create_time: optional_timestamp(row.created_at),
        update_time: optional_timestamp(row.updated_at),
        etag: Etag::format(row.version),
    }
}
