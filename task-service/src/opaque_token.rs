//! The framing both of task-service's opaque tokens share (page tokens, `page_token`; sync
//! tokens, `sync::token`): a version byte, an 8-byte fingerprint of what the token is bound to
//! (SHA-256 of the token kind's name and the binding, cut to 8 bytes), then a fixed-size
//! payload, all in URL-safe base64 without padding (RFC 4648 §5), so a token can sit in a URL.
//!
//! A token needs no secret: whatever it says, the query it feeds runs with the verified caller's
//! user id, so a forged token can only reach the forger's own data. The fingerprint is there to
//! tell a client it replayed a token in the wrong place (another user, another query).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// One kind of token: its version and the name its fingerprints are salted with.
pub struct TokenFrame {
    /// The first byte of every token of this kind; a token of another version is malformed.
    pub version: u8,
    /// Salts the fingerprint so that two kinds of token never match each other, e.g.
    /// `todo.task.v1.ListTasks/v1`.
    pub kind: &'static str,
}

/// Why a token does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Not a token of this kind and version (bad base64, wrong length or version).
    Malformed,
    /// A token of this kind, made for another binding (another user, filter or order).
    OtherBinding,
}

/// The length of the fingerprint, in bytes.
const FINGERPRINT_LEN: usize = 8;

impl TokenFrame {
    fn fingerprint(&self, binding: &[&[u8]]) -> [u8; FINGERPRINT_LEN] {
        let mut hasher = Sha256::new();
        hasher.update(self.kind.as_bytes());
        for part in binding {
            hasher.update(part);
        }
        hasher.finalize()[..FINGERPRINT_LEN].try_into().expect("a SHA-256 digest has at least 8 bytes")
    }

    /// The token carrying `payload` (N bytes), bound to `binding` (its parts are hashed in order).
    pub fn seal<const N: usize>(&self, binding: &[&[u8]], payload: [u8; N]) -> String {
        let mut bytes = Vec::with_capacity(1 + FINGERPRINT_LEN + N);
        bytes.push(self.version);
        bytes.extend_from_slice(&self.fingerprint(binding));
        bytes.extend_from_slice(&payload);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The payload of `token` if this frame sealed it for `binding`. Text longer than any token
    /// of this kind is refused before it is decoded.
    pub fn open<const N: usize>(&self, binding: &[&[u8]], token: &str) -> Result<[u8; N], OpenError> {
        if token.len() != base64::encoded_len(1 + FINGERPRINT_LEN + N, false).unwrap_or(0) {
            return Err(OpenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| OpenError::Malformed)?;
        let (version, rest) = bytes.split_first().ok_or(OpenError::Malformed)?;
        if *version != self.version || rest.len() != FINGERPRINT_LEN + N {
            return Err(OpenError::Malformed);
        }
        let (fingerprint, payload) = rest.split_at(FINGERPRINT_LEN);
        if fingerprint != self.fingerprint(binding) {
            return Err(OpenError::OtherBinding);
        }
        Ok(payload.try_into().expect("the length was checked"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: TokenFrame = TokenFrame { version: 3, kind: "test/v1" };

    #[test]
    fn opens_what_it_sealed_for_the_same_binding_only() {
        let token = FRAME.seal(&[b"me"], [1, 2, 3]);
        assert_eq!(FRAME.open::<3>(&[b"me"], &token), Ok([1, 2, 3]));
        assert_eq!(FRAME.open::<3>(&[b"you"], &token), Err(OpenError::OtherBinding));
        assert_eq!(FRAME.open::<4>(&[b"me"], &token), Err(OpenError::Malformed), "another payload size");
        let other_kind = TokenFrame { version: 3, kind: "other/v1" };
        assert_eq!(other_kind.open::<3>(&[b"me"], &token), Err(OpenError::OtherBinding));
        let other_version = TokenFrame { version: 4, kind: "test/v1" };
        assert_eq!(other_version.open::<3>(&[b"me"], &token), Err(OpenError::Malformed));
    }
}
