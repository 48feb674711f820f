//! Micro-benchmarks: access-token verification (cached and a full Ed25519 check) and page-token
//! encoding. `cargo bench -p bench --bench tokens`

use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::hint::black_box;
use std::sync::Arc;
use task_service::domain::OrderBy;
use task_service::page_token::{Cursor, QueryKey, decode, encode};
use todo_shared::access::TokenConfig;
use todo_shared::access::keyring::KeyRing;
use todo_shared::access::token::{AccessClaims, TokenVerifier};

fn token_verification(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let config = TokenConfig {
        issuer: "todo-auth".into(),
        audience: "todo".into(),
        access_token_ttl: std::time::Duration::from_secs(900),
    };
    let now = chrono::Utc::now().timestamp();
    let claims = AccessClaims {
        iss: config.issuer.clone(),
        aud: config.audience.clone(),
        sub: uuid::Uuid::new_v4(),
        sid: uuid::Uuid::new_v4(),
        iat: now,
        exp: now + 3600,
        jti: uuid::Uuid::new_v4(),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("bench".into());
    header.typ = Some("at+jwt".into());
    let der = key.to_pkcs8_der().expect("encodes");
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(der.as_bytes())).expect("signs");

    // The verifier as the services build it, over a real database holding the public key.
    let verifier = runtime.block_on(async {
        let db = localpg::test_database::TestDatabase::new().await;
        sqlx::query("INSERT INTO signing_keys (kid, public_key) VALUES ('bench', $1)")
            .bind(&key.verifying_key().to_bytes()[..])
            .execute(&db.pool)
            .await
            .expect("inserts the key");
        let keys = Arc::new(KeyRing::new(db.pool.clone().into()));
        keys.reload().await.expect("loads the key");
        TokenVerifier::new(keys, &config)
    });
    runtime.block_on(verifier.verify(&token)).expect("the token verifies");

    c.bench_function("verify access token (cached)", |b| {
        b.iter(|| runtime.block_on(verifier.verify(black_box(&token))).expect("verifies"))
    });
    let decoding = DecodingKey::from_ed_der(&key.verifying_key().to_bytes());
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["todo"]);
    validation.set_issuer(&["todo-auth"]);
    c.bench_function("verify access token (full Ed25519 check)", |b| {
        b.iter(|| jsonwebtoken::decode::<AccessClaims>(black_box(&token), &decoding, &validation).expect("verifies"))
    });
}

fn page_tokens(c: &mut Criterion) {
    let key = QueryKey { user_id: uuid::Uuid::new_v4(), completed: Some(false), order: OrderBy::UpdateTimeDesc };
    let cursor = Cursor { time: chrono::Utc::now(), id: 123_456 };
    let token = encode(&key, cursor);
    c.bench_function("page token encode", |b| b.iter(|| encode(black_box(&key), black_box(cursor))));
    c.bench_function("page token decode", |b| b.iter(|| decode(black_box(&key), black_box(&token)).expect("decodes")));
}

criterion_group!(benches, token_verification, page_tokens);
criterion_main!(benches);
