//! Issuing tokens: EdDSA access tokens, and opaque refresh tokens of which only a SHA-256 hash
//! is ever stored.

use crate::signing_key::TokenSigningKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Header};
use sha2::{Digest, Sha256};
use std::time::Duration;
use todo_proto::auth::v1::TokenPair;
use todo_shared::access::TokenConfig;
use todo_shared::access::token::{ACCESS_TOKEN_TYP, AccessClaims};
use uuid::Uuid;

pub struct TokenIssuer {
    key: TokenSigningKey,
    config: TokenConfig,
    access_ttl: Duration,
}

/// A refresh token to hand out once, and the hash to store.
pub struct NewRefreshToken {
    pub token: String,
    pub hash: [u8; 32],
}

impl TokenIssuer {
    pub fn new(key: TokenSigningKey, config: TokenConfig, access_ttl: Duration) -> Self {
        Self { key, config, access_ttl }
    }

    pub fn key(&self) -> &TokenSigningKey {
        &self.key
    }

    pub fn access_token(&self, user_id: Uuid, session_id: Uuid) -> anyhow::Result<String> {
        let now = Utc::now().timestamp();
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: user_id,
            sid: session_id,
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
            jti: Uuid::new_v4(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some(ACCESS_TOKEN_TYP.into());
        Ok(jsonwebtoken::encode(&header, &claims, &self.key.encoding_key)?)
    }

    /// A new access token and the given refresh token, as the contract's TokenPair.
    pub fn pair(&self, user_id: Uuid, session_id: Uuid, refresh: &NewRefreshToken) -> anyhow::Result<TokenPair> {
        Ok(TokenPair {
            access_token: self.access_token(user_id, session_id)?,
            refresh_token: refresh.token.clone(),
            token_type: "Bearer".into(),
            expires_in: self.access_ttl.as_secs() as i64,
        })
    }
}

impl NewRefreshToken {
    /// 256 random bits, base64url.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let hash = hash_refresh_token(&token);
        Self { token, hash }
    }
}

/// The stored form of a refresh token. A plain hash suffices: the token has 256 random bits,
/// so there is nothing to guess or to look up in a table.
pub fn hash_refresh_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn refresh_expiry(ttl: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(ttl).expect("refresh lifetimes are bounded by configuration")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_256_random_bits_stored_as_their_sha256() {
        let tokens: Vec<NewRefreshToken> = (0..100).map(|_| NewRefreshToken::generate()).collect();
        for t in &tokens {
            let bytes = URL_SAFE_NO_PAD.decode(&t.token).expect("base64url without padding");
            assert_eq!(bytes.len(), 32);
            assert_eq!(t.hash, <[u8; 32]>::from(Sha256::digest(t.token.as_bytes())));
        }
        let distinct: std::collections::HashSet<&str> = tokens.iter().map(|t| t.token.as_str()).collect();
        assert_eq!(distinct.len(), tokens.len());
    }
}
