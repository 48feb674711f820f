//! Access tokens: their claims, and their verification with the algorithm pinned to EdDSA.

use crate::config::TokenConfig;
use crate::keyring::{KeyLookupError, KeyRing};
use crate::status::with_reason;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tonic::{Code, Status};
use uuid::Uuid;

/// The claims of an access token (RFC 9068 names plus `sid`, the session).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: Uuid,
    /// The session id.
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
}

/// The media type in the JWT header, so an access token cannot pass for another kind of JWT.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Why a token was refused. The `Display` texts are safe to send: they never hold the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("missing access token: send metadata `authorization: Bearer <access token>`")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("session revoked")]
    Revoked,
    #[error("token keys could not be loaded")]
    Database(#[source] sqlx::Error),
}

impl TokenError {
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "MISSING_TOKEN",
            TokenError::Invalid => "INVALID_TOKEN",
            TokenError::Expired => "TOKEN_EXPIRED",
            TokenError::Revoked => "SESSION_REVOKED",
            TokenError::Database(_) => "DATABASE_UNAVAILABLE",
        }
    }

    pub fn into_status(self, domain: &str) -> Status {
        match self {
            TokenError::Database(e) => crate::status::database_error(domain, &e),
            other => with_reason(Code::Unauthenticated, domain, other.reason(), other.to_string()),
        }
    }
}

/// Verifies access tokens locally: signature by a registered key, `exp`, `iss`, `aud`, and the
/// algorithm pinned to EdDSA whatever the header says.
pub struct TokenVerifier {
    keys: Arc<KeyRing>,
    validation: Validation,
    /// Tokens already verified, by their whole text (a signature alone could be pasted onto
    /// other claims), until they expire. Ed25519 verification costs tens of microseconds; a
    /// lookup here costs well under one.
    verified: RwLock<HashMap<Box<str>, CachedToken>>,
}

struct CachedToken {
    claims: AccessClaims,
    kid: String,
}

/// Bounds the cache's memory (a token is about 500 bytes).
const CACHE_CAPACITY: usize = 20_000;

impl TokenVerifier {
    pub fn new(keys: Arc<KeyRing>, config: &TokenConfig) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Small: instances share one clock source in practice, and a token must not outlive
        // its stated lifetime by much.
        validation.leeway = 5;
        Self { keys, validation, verified: RwLock::new(HashMap::new()) }
    }

    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let now = chrono::Utc::now().timestamp();
        if let Some(hit) = self.cached(token, now) {
            return Ok(hit);
        }
        let (claims, kid) = self.verify_signature(token).await?;
        self.remember(token, &claims, kid, now);
        Ok(claims)
    }

    /// A cached verification, if the token has not expired since and its key still verifies.
    fn cached(&self, token: &str, now: i64) -> Option<AccessClaims> {
        let cache = self.verified.read().expect("token cache lock is never poisoned: no panics inside");
        let hit = cache.get(token)?;
        let fresh = hit.claims.exp >= now - self.validation.leeway as i64;
        (fresh && self.keys.is_usable(&hit.kid)).then(|| hit.claims.clone())
    }

    fn remember(&self, token: &str, claims: &AccessClaims, kid: String, now: i64) {
        let mut cache = self.verified.write().expect("token cache lock is never poisoned: no panics inside");
        if cache.len() >= CACHE_CAPACITY {
            let leeway = self.validation.leeway as i64;
            cache.retain(|_, hit| hit.claims.exp >= now - leeway);
            if cache.len() >= CACHE_CAPACITY {
                // Still full of live tokens: start over rather than grow.
                cache.clear();
            }
        }
        cache.insert(token.into(), CachedToken { claims: claims.clone(), kid });
    }

    async fn verify_signature(&self, token: &str) -> Result<(AccessClaims, String), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        // Checked before any key is looked up: `none`, HS256 and friends never get further.
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        let key = match self.keys.get(&kid).await {
            Ok(key) => key,
            Err(KeyLookupError::UnknownKid) => return Err(TokenError::Invalid),
            Err(KeyLookupError::Database(e)) => return Err(TokenError::Database(e)),
        };
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })?;
        Ok((data.claims, kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn verifier() -> TokenVerifier {
        // Never reached for malformed input; a refused connection for well-formed headers.
        let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").expect("a valid URL");
        TokenVerifier::new(
            Arc::new(KeyRing::new(pool.into())),
            &TokenConfig { issuer: "i".into(), audience: "a".into() },
        )
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).expect("JSON serializes"))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Arbitrary text is refused, never accepted and never a panic.
        #[test]
        fn arbitrary_text_is_refused(token in ".{0,300}") {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            let outcome = runtime.block_on(async { verifier().verify(&token).await });
            proptest::prop_assert!(outcome.is_err());
        }

        /// Well-formed JWTs with arbitrary headers, claims and signatures are refused.
        #[test]
        fn arbitrary_jwts_are_refused(
            alg in proptest::sample::select(vec!["none", "HS256", "RS256", "EdDSA", "ES256", ""]),
            typ in proptest::option::of("[a-z+]{0,8}"),
            kid in proptest::option::of(".{0,20}"),
            sub in ".{0,40}",
            exp in proptest::num::i64::ANY,
            signature in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            let header = serde_json::json!({"alg": alg, "typ": typ, "kid": kid});
            let claims = serde_json::json!({"iss": "i", "aud": "a", "sub": sub, "sid": sub, "exp": exp, "iat": 0, "jti": sub});
            let token = format!("{}.{}.{}", b64(&header), b64(&claims), URL_SAFE_NO_PAD.encode(&signature));
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            let outcome = runtime.block_on(async { verifier().verify(&token).await });
            proptest::prop_assert!(outcome.is_err());
        }
    }
}
