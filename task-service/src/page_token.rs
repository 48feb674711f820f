//! The opaque ListTasks page token: a keyset cursor (the last row's sort time and id) bound to
//! the caller and the query that produced it.
//!
//! Binding is by a fingerprint of (user, filter, order): a token replayed by another user or
//! with another filter is refused. It needs no secret: whatever a token says, the query still
//! runs with the verified caller's user_id, so a forged token can only page through one's own
//! tasks.

use crate::domain::OrderBy;
use crate::opaque_token::{OpenError, TokenFrame};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Page tokens: version 1, the cursor's time (microseconds since the Unix epoch) and id, both
/// big-endian, in 12 bytes.
const FRAME: TokenFrame = TokenFrame { version: 1, kind: "todo.task.v1.ListTasks/v1" };

/// What a page token binds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryKey {
    /// The caller.
    pub user_id: Uuid,
    /// The `completed` filter of the request.
    pub completed: Option<bool>,
    /// The request's `order_by`.
    pub order: OrderBy,
}

impl QueryKey {
    /// The `completed` filter as one byte: none 0, false 1, true 2.
    fn completed_code(&self) -> u8 {
        match self.completed {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        }
    }
}

/// The position after which the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The last row's sort time (create or update time, as ordered).
    pub time: DateTime<Utc>,
    /// The last row's id, which breaks ties between equal times.
    pub id: i32,
}

/// Why a page token was refused; its `Display` completes "page_token ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    /// Not a page token of this service.
    #[error("is not a valid page token")]
    Malformed,
    /// A page token of another user, filter or order.
    #[error("belongs to another query; pass the same filter and order_by as the previous page")]
    OtherQuery,
}

/// The page token that resumes `key`'s listing after `cursor`.
pub fn encode(key: &QueryKey, cursor: Cursor) -> String {
    let mut payload = [0u8; 12];
    payload[..8].copy_from_slice(&cursor.time.timestamp_micros().to_be_bytes());
    payload[8..].copy_from_slice(&cursor.id.to_be_bytes());
    FRAME.seal(&[key.user_id.as_bytes(), &[key.completed_code()], &[key.order.code()]], payload)
}

/// The cursor `token` stands for, if it was made for `key`.
pub fn decode(key: &QueryKey, token: &str) -> Result<Cursor, PageTokenError> {
    let payload: [u8; 12] = FRAME
        .open(&[key.user_id.as_bytes(), &[key.completed_code()], &[key.order.code()]], token)
        .map_err(|e| match e {
            OpenError::Malformed => PageTokenError::Malformed,
            OpenError::OtherBinding => PageTokenError::OtherQuery,
        })?;
    let micros = i64::from_be_bytes(payload[..8].try_into().expect("slice of 8"));
    let id = i32::from_be_bytes(payload[8..].try_into().expect("slice of 4"));
    // Only times PostgreSQL can compare with (and any real row has): years 1 to 9999.
    const YEAR_1: i64 = -62_135_596_800_000_000;
    const YEAR_10000: i64 = 253_402_300_800_000_000;
    if !(YEAR_1..YEAR_10000).contains(&micros) {
        return Err(PageTokenError::Malformed);
    }
    let time = DateTime::from_timestamp_micros(micros).ok_or(PageTokenError::Malformed)?;
    Ok(Cursor { time, id })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// A page token's length in bytes: version, fingerprint, payload.
    const LEN: usize = 1 + 8 + 12;

    fn key() -> QueryKey {
        QueryKey { user_id: Uuid::from_u128(1), completed: None, order: OrderBy::CreateTimeDesc }
    }

    #[test]
    fn round_trips() {
        let cursor = Cursor { time: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(), id: 42 };
        assert_eq!(decode(&key(), &encode(&key(), cursor)).unwrap(), cursor);
    }

    #[test]
    fn bound_to_user_filter_and_order() {
        let cursor = Cursor { time: Utc::now(), id: 1 };
        let token = encode(&key(), cursor);
        let other_user = QueryKey { user_id: Uuid::from_u128(2), ..key() };
        let other_filter = QueryKey { completed: Some(true), ..key() };
        let other_order = QueryKey { order: OrderBy::UpdateTimeDesc, ..key() };
        for k in [other_user, other_filter, other_order] {
            assert_eq!(decode(&k, &token), Err(PageTokenError::OtherQuery));
        }
    }

    #[test]
    fn garbage_is_malformed() {
        for t in ["", "abc", "!!!!", &"A".repeat(200), &URL_SAFE_NO_PAD.encode([9u8; LEN])] {
            assert_eq!(decode(&key(), t), Err(PageTokenError::Malformed), "{t}");
        }
    }

    proptest::proptest! {
        /// Whatever a client sends as page_token, decoding answers without panicking, and only
        /// a token this module made for this query decodes.
        #[test]
        fn decode_never_panics(token in ".{0,100}", raw in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let _ = decode(&key(), &token);
            let encoded = URL_SAFE_NO_PAD.encode(&raw);
            if let Ok(cursor) = decode(&key(), &encoded) {
                proptest::prop_assert_eq!(encode(&key(), cursor), encoded);
            }
        }

        #[test]
        fn any_cursor_round_trips(micros in -8_000_000_000_000_000i64..8_000_000_000_000_000i64, id in proptest::num::i32::ANY) {
            let cursor = Cursor { time: DateTime::from_timestamp_micros(micros).unwrap(), id };
            proptest::prop_assert_eq!(decode(&key(), &encode(&key(), cursor)), Ok(cursor));
        }
    }
}
