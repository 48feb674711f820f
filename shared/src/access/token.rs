//! Access tokens: their claims, and their verification with the algorithm pinned to EdDSA.

use super::keyring::{KeyLookupError, KeyRing};
use crate::env::{ConfigError, Env, optional, seconds};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Token settings that issuer and verifiers must agree on.
#[derive(Clone, Debug)]
pub struct TokenConfig {
    /// `iss` of access tokens (`TOKEN_ISSUER`, default `todo-auth`).
    pub issuer: String,
    /// `aud` of access tokens (`TOKEN_AUDIENCE`, default `todo`).
    pub audience: String,
    /// How long an access token lives (`ACCESS_TOKEN_TTL_SECONDS`, 5 s to a day, default 900):
    /// auth-service issues tokens for this long; task-service keeps revocations at least this
    /// long plus [`EXP_LEEWAY_SECONDS`].
    pub access_token_ttl: std::time::Duration,
}

/// How far past its `exp` a token is still accepted, in seconds: room for clocks that disagree.
pub const EXP_LEEWAY_SECONDS: u64 = 5;

impl TokenConfig {
    /// Every variable `from_env` reads, for `--help`.
    pub const SETTINGS: &[crate::env::Setting] = &[
        crate::env::Setting {
            var: "TOKEN_ISSUER",
            default: "todo-auth",
            meaning: "iss of access tokens; must agree between the services",
        },
        crate::env::Setting {
            var: "TOKEN_AUDIENCE",
            default: "todo",
            meaning: "aud of access tokens; must agree between the services",
        },
        crate::env::Setting {
            var: "ACCESS_TOKEN_TTL_SECONDS",
            default: "900",
            meaning: "access-token lifetime, 5 to 86400 s",
        },
    ];

    /// `TOKEN_ISSUER`, `TOKEN_AUDIENCE` and `ACCESS_TOKEN_TTL_SECONDS`, or their defaults; an
    /// error names `ACCESS_TOKEN_TTL_SECONDS` when it is not a whole number of seconds in range.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        Ok(Self {
            issuer: optional(env, "TOKEN_ISSUER").unwrap_or_else(|| "todo-auth".into()),
            audience: optional(env, "TOKEN_AUDIENCE").unwrap_or_else(|| "todo".into()),
            access_token_ttl: seconds(env, "ACCESS_TOKEN_TTL_SECONDS", 900, 5..=86_400)?,
        })
    }
}

/// The claims of an access token (RFC 9068 names plus `sid`, the session).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// Issuer (RFC 7519 4.1.1).
    pub iss: String,
    /// Audience (RFC 7519 4.1.3).
    pub aud: String,
    /// The user id.
    pub sub: Uuid,
    /// The session id.
    pub sid: Uuid,
    /// Issued at, seconds since the Unix epoch (RFC 7519 4.1.6).
    pub iat: i64,
    /// Expires at, seconds since the Unix epoch (RFC 7519 4.1.4).
    pub exp: i64,
    /// A unique id of this token (RFC 7519 4.1.7).
    pub jti: Uuid,
}

/// The media type in the JWT header, so an access token cannot pass for another kind of JWT.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Why a token was refused. The `Display` texts are safe to send: they never hold the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No bearer token was sent: `MISSING_TOKEN`.
    #[error("missing access token: send metadata `authorization: Bearer <access token>`")]
    Missing,
    /// Malformed, forged, of another kind, or signed by a key that no longer verifies: `INVALID_TOKEN`.
    #[error("invalid token")]
    Invalid,
    /// Past `exp` (and the leeway): `TOKEN_EXPIRED`.
    #[error("token expired")]
    Expired,
    /// Its session was revoked or deleted: `SESSION_REVOKED`.
    #[error("session revoked")]
    Revoked,
    /// Its key (or its session) could not be looked up: `DATABASE_UNAVAILABLE`.
    #[error("token keys could not be loaded")]
    Database(#[source] sqlx::Error),
}

impl TokenError {
    /// The ErrorInfo reason a client sees for this refusal, e.g. `TOKEN_EXPIRED`.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "MISSING_TOKEN",
            TokenError::Invalid => "INVALID_TOKEN",
            TokenError::Expired => "TOKEN_EXPIRED",
            TokenError::Revoked => "SESSION_REVOKED",
            TokenError::Database(_) => "DATABASE_UNAVAILABLE",
        }
    }
}

/// Verifies access tokens locally: signature by a registered key, `exp`, `iss`, `aud`, and the
/// algorithm pinned to EdDSA whatever the header says.
pub struct TokenVerifier {
    keys: Arc<KeyRing>,
    validation: Validation,
    /// Tokens already verified, by their whole text (a signature alone could be pasted onto
    /// other claims), each until its own `exp` (plus the leeway). Ed25519 verification costs
    /// tens of microseconds; a lookup here costs well under one. Bounded by `CACHE_CAPACITY`:
    /// when full, moka evicts the tokens least likely to be used again (TinyLFU), not all of them.
    verified: moka::sync::Cache<Box<str>, CachedToken>,
}

#[derive(Clone)]
struct CachedToken {
    claims: AccessClaims,
    kid: String,
}

/// Bounds the cache's memory (a token is about 500 bytes).
const CACHE_CAPACITY: u64 = 20_000;

/// A cached token lives until its `exp` plus the verifier's leeway, measured from when it was
/// cached (moka keeps time with `Instant`, the claims with Unix seconds).
struct UntilExpiry {
    leeway: i64,
}

impl moka::Expiry<Box<str>, CachedToken> for UntilExpiry {
    fn expire_after_create(&self, _: &Box<str>, token: &CachedToken, _: std::time::Instant) -> Option<Duration> {
        let left = token.claims.exp + self.leeway - chrono::Utc::now().timestamp();
        Some(Duration::from_secs(left.max(0).unsigned_abs()))
    }
}

impl TokenVerifier {
    /// A verifier of tokens signed by a key in `keys`, for `config`'s issuer and audience, with a
    /// 5 s leeway on `exp`.
    pub fn new(keys: Arc<KeyRing>, config: &TokenConfig) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Small: instances share one clock source in practice, and a token must not outlive
        // its stated lifetime by much.
        validation.leeway = EXP_LEEWAY_SECONDS;
        let verified = moka::sync::Cache::builder()
            .max_capacity(CACHE_CAPACITY)
            .expire_after(UntilExpiry { leeway: validation.leeway as i64 })
            .build();
        Self { keys, validation, verified }
    }

    /// The key ring it verifies with.
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The claims of `token` if it verifies now; `Expired` past `exp` (5 s leeway), `Invalid` for
    /// anything else wrong, `Database` when its key could not be looked up.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        self.verify_with_kid(token).await.map(|(claims, _)| claims)
    }

    /// `verify`, and the `kid` of the key that signed the token: for a verifier that checks the
    /// key's state in the database itself (auth-service, whose key ring hears of no retirement).
    pub async fn verify_with_kid(&self, token: &str) -> Result<(AccessClaims, String), TokenError> {
        let now = chrono::Utc::now().timestamp();
        if let Some(hit) = self.cached(token, now) {
            return Ok(hit);
        }
        let (claims, kid) = self.verify_signature(token).await?;
        self.remember(token, &claims, kid.clone());
        Ok((claims, kid))
    }

    /// A cached verification, if the token has not expired since and its key still verifies.
    fn cached(&self, token: &str, now: i64) -> Option<(AccessClaims, String)> {
        let hit = self.verified.get(token)?;
        // Also checked here, in the claims' own clock: the rule must not rest on the cache's.
        let fresh = hit.claims.exp >= now - self.validation.leeway as i64;
        (fresh && self.keys.is_usable(&hit.kid)).then_some((hit.claims, hit.kid))
    }

    fn remember(&self, token: &str, claims: &AccessClaims, kid: String) {
        self.verified.insert(token.into(), CachedToken { claims: claims.clone(), kid });
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
    use ed25519_dalek::{Signer, SigningKey};
    use proptest::prelude::*;

    const KID: &str = "test-key";
    const ISSUER: &str = "i";
    const AUDIENCE: &str = "a";

    fn signing_key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    /// A verifier that knows one key (`KID`), so that well-formed tokens reach the algorithm,
    /// signature and claim checks; its database is nowhere, so only an unknown kid reaches it.
    fn verifier() -> TokenVerifier {
        let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").expect("a valid URL");
        let keys = KeyRing::loaded_with(pool.into(), &[(KID, signing_key().verifying_key().to_bytes())]);
        TokenVerifier::new(
            Arc::new(keys),
            &TokenConfig {
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                access_token_ttl: Duration::from_secs(900),
            },
        )
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).expect("JSON serializes"))
    }

    fn verify(token: &str) -> Result<AccessClaims, TokenError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async { verifier().verify(token).await })
    }

    /// How the token's signature is made.
    #[derive(Debug, Clone, Copy)]
    enum Signature {
        /// By the verifier's key, over the header and claims as sent.
        Real,
        /// Real, with one byte flipped.
        Tampered(usize),
        /// Bytes of no key.
        Arbitrary,
    }

    #[tokio::test]
    async fn the_cache_holds_at_most_its_capacity_and_lets_expired_tokens_go() {
        let verifier = verifier();
        let now = chrono::Utc::now().timestamp();
        let claims = |exp: i64| AccessClaims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: Uuid::nil(),
            sid: Uuid::nil(),
            iat: now,
            exp,
            jti: Uuid::nil(),
        };
        // moka counts after its pending work is done.
        let size = || {
            verifier.verified.run_pending_tasks();
            verifier.verified.entry_count()
        };
        // Full of expired tokens: none is served, and they leave on their own (moka's timer
        // wheel turns about once a second), making room for live ones.
        for n in 0..CACHE_CAPACITY {
            verifier.remember(&format!("expired {n}"), &claims(now - 600), KID.into());
        }
        assert!(verifier.cached("expired 0", now).is_none(), "an expired token is never served");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() > 0 {
            assert!(std::time::Instant::now() < deadline, "{} expired tokens still held after 10 s", size());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        verifier.remember("live", &claims(now + 600), KID.into());
        assert!(verifier.cached("live", now).is_some(), "a live token is served from the cache");
        // Full of live tokens: it never grows past its capacity.
        for n in 0..CACHE_CAPACITY + 1_000 {
            verifier.remember(&format!("live {n}"), &claims(now + 600), KID.into());
        }
        assert!(size() <= CACHE_CAPACITY, "{} entries", size());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Arbitrary text is refused as an invalid token, never accepted, never a panic.
        #[test]
        fn arbitrary_text_is_refused(token in ".{0,300}") {
            prop_assert!(matches!(verify(&token), Err(TokenError::Invalid)));
        }

        /// A model of the verifier: a JWT is accepted exactly when its header says EdDSA and
        /// at+jwt with the known kid, the known key signed it as sent, and its claims are the
        /// configured issuer and audience, unexpired, with a user and session id. Each part is
        /// right nine times in ten, so every run has tokens right but for one part, and right ones.
        #[test]
        fn exactly_the_right_jwts_are_accepted(
            alg in prop_oneof![9 => Just("EdDSA"), 1 => prop::sample::select(vec!["none", "HS256", "RS256", "ES256", ""])],
            typ in prop_oneof![9 => Just(Some("at+jwt")), 1 => prop::sample::select(vec![Some("JWT"), Some("dpop+jwt"), None])],
            kid in prop_oneof![9 => Just(Some(KID)), 1 => Just(None)],
            issuer in prop_oneof![9 => Just(ISSUER), 1 => Just("another issuer")],
            audience in prop_oneof![9 => Just(AUDIENCE), 1 => Just("another audience")],
            expires_in in prop_oneof![9 => Just(600i64), 1 => Just(-600i64)],
            sub in prop_oneof![9 => Just(Some(Uuid::new_v4().to_string())), 1 => prop::sample::select(vec![Some("not a uuid".to_string()), None])],
            signature in prop_oneof![
                9 => Just(Signature::Real),
                1 => (0usize..64).prop_map(Signature::Tampered),
                1 => Just(Signature::Arbitrary),
            ],
            arbitrary in prop::collection::vec(any::<u8>(), 64),
        ) {
            let parts = Parts { alg, typ, kid, issuer, audience, expires_in, sub, signature, arbitrary };
            if let Err(wrong) = parts.check() {
                return Err(TestCaseError::fail(wrong));
            }
        }
    }

    /// The parts of a JWT that the verifier judges, each right or wrong.
    #[derive(Clone, Debug)]
    struct Parts {
        alg: &'static str,
        typ: Option<&'static str>,
        kid: Option<&'static str>,
        issuer: &'static str,
        audience: &'static str,
        expires_in: i64,
        sub: Option<String>,
        signature: Signature,
        arbitrary: Vec<u8>,
    }

    impl Parts {
        fn right() -> Self {
            Parts {
                alg: "EdDSA",
                typ: Some("at+jwt"),
                kid: Some(KID),
                issuer: ISSUER,
                audience: AUDIENCE,
                expires_in: 600,
                sub: Some(Uuid::new_v4().to_string()),
                signature: Signature::Real,
                arbitrary: vec![7; 64],
            }
        }

        fn is_right(&self) -> bool {
            self.alg == "EdDSA"
                && self.typ == Some("at+jwt")
                && self.kid.is_some()
                && self.issuer == ISSUER
                && self.audience == AUDIENCE
                && self.expires_in > 0
                && self.sub.as_deref().is_some_and(|s| s.parse::<Uuid>().is_ok())
                && matches!(self.signature, Signature::Real)
        }

        /// Verifies the token these parts make; an error says how the verdict was wrong.
        fn check(&self) -> Result<(), String> {
            let now = chrono::Utc::now().timestamp();
            let header = serde_json::json!({"alg": self.alg, "typ": self.typ, "kid": self.kid});
            let mut claims = serde_json::json!({
                "iss": self.issuer, "aud": self.audience, "sid": Uuid::new_v4(), "iat": now,
                "exp": now + self.expires_in, "jti": Uuid::new_v4(),
            });
            if let Some(sub) = &self.sub {
                claims["sub"] = serde_json::json!(sub);
            }
            let signed = format!("{}.{}", b64(&header), b64(&claims));
            let mut bytes = signing_key().sign(signed.as_bytes()).to_bytes().to_vec();
            match self.signature {
                Signature::Real => {}
                Signature::Tampered(at) => bytes[at] ^= 0x01,
                Signature::Arbitrary => bytes = self.arbitrary.clone(),
            }
            let token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&bytes));
            match (verify(&token), self.is_right()) {
                (Ok(verified), true) if Some(verified.sub.to_string()) == self.sub => Ok(()),
                (Ok(_), _) => Err(format!("accepted a wrong token: {self:?}")),
                (Err(error), true) => Err(format!("refused a right token ({error}): {self:?}")),
                // Refused for what it is: expired only when it is, never for want of a database.
                (Err(TokenError::Invalid), false) => Ok(()),
                (Err(TokenError::Expired), false) if self.expires_in < 0 => Ok(()),
                (Err(error), false) => {
                    Err(format!("refused with {} where INVALID_TOKEN was due: {self:?}", error.reason()))
                }
            }
        }
    }

    #[test]
    fn the_right_jwt_is_accepted_and_each_part_wrong_alone_is_refused() {
        let right = Parts::right();
        let mut cases = vec![right.clone()];
        cases.push(Parts { alg: "HS256", ..right.clone() });
        cases.push(Parts { alg: "none", ..right.clone() });
        cases.push(Parts { typ: Some("JWT"), ..right.clone() });
        cases.push(Parts { typ: None, ..right.clone() });
        cases.push(Parts { kid: None, ..right.clone() });
        cases.push(Parts { issuer: "another issuer", ..right.clone() });
        cases.push(Parts { audience: "another audience", ..right.clone() });
        cases.push(Parts { expires_in: -600, ..right.clone() });
        cases.push(Parts { sub: Some("not a uuid".into()), ..right.clone() });
        cases.push(Parts { sub: None, ..right.clone() });
        cases.push(Parts { signature: Signature::Tampered(0), ..right.clone() });
        cases.push(Parts { signature: Signature::Tampered(63), ..right.clone() });
        cases.push(Parts { signature: Signature::Arbitrary, ..right.clone() });
        for case in cases {
            case.check().unwrap_or_else(|wrong| panic!("{wrong}"));
        }
    }
}
