//! The opaque ListTasks page token: a keyset cursor (the last row's sort time and id) bound to
//! the caller and the query that produced it.
//!
//! Binding is by a fingerprint of (user, filter, order): a token replayed by another user or
//! with another filter is refused. It needs no secret: whatever a token says, the query still
//! runs with the verified caller's user_id, so a forged token can only page through one's own
//! tasks.

use crate::domain::OrderBy;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 8 + 4;

/// What a page token binds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryKey {
    pub user_id: Uuid,
    pub completed: Option<bool>,
    pub order: OrderBy,
}

impl QueryKey {
    fn fingerprint(&self) -> [u8; 8] {
        let mut hasher = Sha256::new();
        hasher.update(b"todo.task.v1.ListTasks/v1");
        hasher.update(self.user_id.as_bytes());
        hasher.update([match self.completed {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        }]);
        hasher.update([self.order.code()]);
        hasher.finalize()[..8].try_into().expect("a SHA-256 digest has at least 8 bytes")
    }
}

/// The position after which the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub time: DateTime<Utc>,
    pub id: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    #[error("is not a valid page token")]
    Malformed,
    #[error("belongs to another query; pass the same filter and order_by as the previous page")]
    OtherQuery,
}

pub fn encode(key: &QueryKey, cursor: Cursor) -> String {
    let mut bytes = Vec::with_capacity(LEN);
    bytes.push(VERSION);
    bytes.extend_from_slice(&key.fingerprint());
    bytes.extend_from_slice(&cursor.time.timestamp_micros().to_be_bytes());
    bytes.extend_from_slice(&cursor.id.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn decode(key: &QueryKey, token: &str) -> Result<Cursor, PageTokenError> {
    if token.len() > 64 {
        return Err(PageTokenError::Malformed);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| PageTokenError::Malformed)?;
    if bytes.len() != LEN || bytes[0] != VERSION {
        return Err(PageTokenError::Malformed);
    }
    if bytes[1..9] != key.fingerprint() {
        return Err(PageTokenError::OtherQuery);
    }
    let micros = i64::from_be_bytes(bytes[9..17].try_into().expect("slice of 8"));
    let id = i32::from_be_bytes(bytes[17..21].try_into().expect("slice of 4"));
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
