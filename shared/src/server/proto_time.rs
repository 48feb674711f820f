//! Converting database times to `google.protobuf.Timestamp`.

use chrono::{DateTime, Utc};

/// `time` as a `google.protobuf.Timestamp` (seconds and nanoseconds since the Unix epoch).
pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: time.timestamp(), nanos: time.timestamp_subsec_nanos() as i32 }
}

/// For the nullable timestamp columns of the design document's tables.
pub fn optional_timestamp(time: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    time.map(timestamp)
}
