//! The opaque sync token: a position in the caller's change feed (the number of the last change
//! the client has), bound to the caller by a fingerprint of the user id, like page tokens. It
//! needs no secret: the feed is always read with the verified caller's user_id.

use crate::opaque_token::{OpenError, TokenFrame};
use uuid::Uuid;

/// Sync tokens: version 2, `seq` and `floor` big-endian, in 16 bytes.
const FRAME: TokenFrame = TokenFrame { version: 2, kind: "todo.task.v1.SyncTasks/v1" };

/// Where a client stands in its feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncPosition {
    /// The last change the client has.
    pub seq: i64,
    /// Pruned tombstones up to here do not concern the client.
    pub floor: i64,
}

/// Why a sync token was refused; its `Display` completes "sync_token ...".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SyncTokenError {
    /// Not a sync token of this service.
    #[error("is not a sync token of this service")]
    Malformed,
    /// Another user's sync token.
    #[error("belongs to another user")]
    OtherUser,
}

/// The sync token for `user_id` standing at `position`.
pub fn encode(user_id: Uuid, position: SyncPosition) -> String {
    let mut payload = [0u8; 16];
    payload[..8].copy_from_slice(&position.seq.to_be_bytes());
    payload[8..].copy_from_slice(&position.floor.to_be_bytes());
    FRAME.seal(&[user_id.as_bytes()], payload)
}

/// The position a token stands for; None for "" (the start of the feed).
pub fn decode(user_id: Uuid, token: &str) -> Result<Option<SyncPosition>, SyncTokenError> {
    if token.is_empty() {
        return Ok(None);
    }
    let payload: [u8; 16] = FRAME.open(&[user_id.as_bytes()], token).map_err(|e| match e {
        OpenError::Malformed => SyncTokenError::Malformed,
        OpenError::OtherBinding => SyncTokenError::OtherUser,
    })?;
    let seq = i64::from_be_bytes(payload[..8].try_into().expect("slice of 8"));
    let floor = i64::from_be_bytes(payload[8..].try_into().expect("slice of 8"));
    if seq < 0 || floor < 0 {
        return Err(SyncTokenError::Malformed);
    }
    Ok(Some(SyncPosition { seq, floor }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn round_trips_and_is_bound_to_the_user() {
        let (me, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let at = SyncPosition { seq: 42, floor: 7 };
        assert_eq!(decode(me, &encode(me, at)), Ok(Some(at)));
        assert_eq!(decode(me, ""), Ok(None));
        assert_eq!(decode(other, &encode(me, at)), Err(SyncTokenError::OtherUser));
        let negative = encode(me, SyncPosition { seq: -1, floor: 0 });
        for junk in ["abc", "!!!!", &"A".repeat(100), &negative] {
            assert_eq!(decode(me, junk), Err(SyncTokenError::Malformed), "{junk}");
        }
    }

    proptest::proptest! {
        /// Whatever a client sends, decoding answers without panicking, and only tokens this
        /// module made decode.
        #[test]
        fn decode_never_panics(token in ".{0,80}", raw in proptest::collection::vec(proptest::num::u8::ANY, 0..30)) {
            let me = Uuid::from_u128(7);
            let _ = decode(me, &token);
            let encoded = URL_SAFE_NO_PAD.encode(&raw);
            // "" is the start of the feed, not a token this module made.
            if let Ok(Some(position)) = decode(me, &encoded) {
                proptest::prop_assert_eq!(encode(me, position), encoded);
            }
        }
    }
}
