//! Tokens that must not get past task-service's verifier.

use crate::token_minting::{TestKey, good_claims, live_session};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use testkit::{TestApp, assert_error, authed};
use todo_proto::task::v1::ListTasksRequest;
use tonic::Code;

async fn list_with(app: &TestApp, token: &str) -> Result<(), tonic::Status> {
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), token)).await.map(|_| ())
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[tokio::test]
async fn a_registered_key_works_and_every_forgery_fails() {
    let app = TestApp::spawn().await;
    let (user, tokens) = app.sign_up("vic@example.com").await;
    let key = TestKey::new("test-key");
    key.register(&app.db.pool).await;
    let sid = live_session(&app.db.pool, &user.id).await;

    // Control: a well-formed token from a registered key is accepted.
    list_with(&app, &key.sign_claims(&good_claims(&user.id, sid))).await.unwrap();

    let mut cases: Vec<(&str, String, &str)> = Vec::new();

    // alg "none", no signature.
    let header = serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": key.kid});
    cases.push(("alg none", format!("{}.{}.", b64(&header), b64(&good_claims(&user.id, sid))), "INVALID_TOKEN"));

    // HS256 with the public key as the HMAC secret.
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(key.kid.clone());
    hs.typ = Some("at+jwt".into());
    let forged = jsonwebtoken::encode(
        &hs,
        &good_claims(&user.id, sid),
        &jsonwebtoken::EncodingKey::from_secret(&key.public_key()),
    )
    .unwrap();
    cases.push(("HS256 with the public key", forged, "INVALID_TOKEN"));

    // A foreign key claiming a registered kid.
    let impostor = TestKey::new("test-key");
    cases.push(("foreign key, known kid", impostor.sign_claims(&good_claims(&user.id, sid)), "INVALID_TOKEN"));

    // An unknown kid.
    let stranger = TestKey::new("never-registered");
    cases.push(("unknown kid", stranger.sign_claims(&good_claims(&user.id, sid)), "INVALID_TOKEN"));

    // Tampered claims: another user's id pasted into a validly signed token.
    let genuine = key.sign_claims(&good_claims(&user.id, sid));
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64(&good_claims(&uuid::Uuid::new_v4().to_string(), sid)), parts[2]);
    cases.push(("tampered claims", tampered, "INVALID_TOKEN"));

    // Expired, wrong issuer, wrong audience, missing typ.
    let mut expired = good_claims(&user.id, sid);
    expired["exp"] = (chrono::Utc::now().timestamp() - 60).into();
    cases.push(("expired", key.sign_claims(&expired), "TOKEN_EXPIRED"));
    let mut wrong_iss = good_claims(&user.id, sid);
    wrong_iss["iss"] = "someone-else".into();
    cases.push(("wrong iss", key.sign_claims(&wrong_iss), "INVALID_TOKEN"));
    let mut wrong_aud = good_claims(&user.id, sid);
    wrong_aud["aud"] = "another-api".into();
    cases.push(("wrong aud", key.sign_claims(&wrong_aud), "INVALID_TOKEN"));
    let mut no_typ = key.header();
    no_typ.typ = Some("JWT".into());
    cases.push(("not an access token typ", key.sign(&no_typ, &good_claims(&user.id, sid)), "INVALID_TOKEN"));

    // The refresh token is not an access token.
    cases.push(("refresh token", tokens.refresh_token.clone(), "INVALID_TOKEN"));
    cases.push(("garbage", "Zm9v.YmFy.YmF6".into(), "INVALID_TOKEN"));

    for (what, token, reason) in cases {
        let err = list_with(&app, &token).await.expect_err(what);
        assert_error(&err, Code::Unauthenticated, reason);
    }
}

#[tokio::test]
async fn missing_or_malformed_authorization() {
    let app = TestApp::spawn().await;
    let err = app.tasks.clone().list_tasks(ListTasksRequest::default()).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "MISSING_TOKEN");
    let mut request = tonic::Request::new(ListTasksRequest::default());
    request.metadata_mut().insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    let err = app.tasks.clone().list_tasks(request).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_TOKEN");
}

#[tokio::test]
async fn a_token_of_a_deleted_account_creates_nothing() {
    let app = TestApp::spawn().await;
    let key = TestKey::new("test-key");
    key.register(&app.db.pool).await;
    let ghost = key.sign_claims(&good_claims(&uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4()));
    let err = app
        .tasks
        .clone()
        .create_task(authed(
            todo_proto::task::v1::CreateTaskRequest { title: "boo".into(), ..Default::default() },
            &ghost,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
}
