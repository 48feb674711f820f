//! A signing key of the test's own, to mint tokens auth-service would never issue.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub struct TestKey {
    pub signing: SigningKey,
    pub kid: String,
}

impl TestKey {
    pub fn new(kid: &str) -> Self {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        TestKey { signing: SigningKey::from_bytes(&secret), kid: kid.into() }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// Registers the public key as an auth-service instance would.
    pub async fn register(&self, pool: &sqlx::PgPool) {
        sqlx::query("INSERT INTO signing_keys (kid, public_key) VALUES ($1, $2)")
            .bind(&self.kid)
            .bind(&self.public_key()[..])
            .execute(pool)
            .await
            .unwrap();
    }

    pub fn header(&self) -> Header {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        header
    }

    pub fn sign(&self, header: &Header, claims: &Value) -> String {
        let der = self.signing.to_pkcs8_der().unwrap();
        jsonwebtoken::encode(header, claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
    }

    pub fn sign_claims(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}

/// A user who signed up, a live session of theirs, and a registered test key: what a test needs
/// to mint the tokens auth-service would issue, and variations on them.
pub struct MintingUser {
    pub user_id: String,
    pub session_id: uuid::Uuid,
    pub key: TestKey,
}

impl MintingUser {
    /// Claims auth-service would issue for this user's session, valid for a minute.
    pub fn claims(&self) -> Value {
        good_claims(&self.user_id, self.session_id)
    }

    /// A token auth-service would issue, signed with the test key.
    pub fn token(&self) -> String {
        self.key.sign_claims(&self.claims())
    }
}

/// Signs `email` up, opens a live session for them and registers a test key named `kid`.
pub async fn user_with_test_key(app: &testkit::TestApp, email: &str, kid: &str) -> MintingUser {
    let (user, _) = app.sign_up(email).await;
    let session_id = live_session(&app.db.pool, &user.id).await;
    let key = TestKey::new(kid);
    key.register(&app.db.pool).await;
    MintingUser { user_id: user.id, session_id, key }
}

/// A live session of `user_id`, as auth-service would have opened it.
pub async fn live_session(pool: &sqlx::PgPool, user_id: &str) -> uuid::Uuid {
    sqlx::query_scalar("INSERT INTO sessions (user_id) VALUES ($1::uuid) RETURNING id")
        .bind(user_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Claims auth-service would issue for this session, valid for a minute.
pub fn good_claims(user_id: &str, session_id: uuid::Uuid) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "iss": testkit::ISSUER,
        "aud": testkit::AUDIENCE,
        "sub": user_id,
        "sid": session_id,
        "iat": now,
        "exp": now + 60,
        "jti": uuid::Uuid::new_v4(),
    })
}
