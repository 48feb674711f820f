use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::time::Duration;
use testkit::{TestApp, assert_error, authed};
use todo_proto::auth::v1::*;
use tonic::Code;

#[tokio::test]
async fn jwks_lists_the_key_that_signs_and_it_verifies() {
    let app = TestApp::spawn().await;
    let (user, tokens) = app.sign_up("sam@example.com").await;
    let keys = app.auth.clone().get_jwks(GetJwksRequest {}).await.unwrap().into_inner().keys;
    assert_eq!(keys.len(), 1);
    let jwk = &keys[0];
    assert_eq!(
        (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str(), jwk.r#use.as_str()),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );
    let header = jsonwebtoken::decode_header(&tokens.access_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(jwk.kid.as_str()));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);

    // A client verifying with nothing but the JWKS.
    let key = jsonwebtoken::DecodingKey::from_ed_components(&jwk.x).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[testkit::AUDIENCE]);
    validation.set_issuer(&[testkit::ISSUER]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(&tokens.access_token, &key, &validation).unwrap().claims;
    assert_eq!(claims["sub"], user.id);
    for claim in ["sid", "iat", "exp", "jti"] {
        assert!(claims.get(claim).is_some(), "claim {claim}");
    }
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 900);
    assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.x).unwrap().len(), 32);
}

#[tokio::test]
async fn validate_token_answers_for_live_sessions_only() {
    let app = TestApp::spawn().await;
    let (user, tokens) = app.sign_up("tia@example.com").await;
    let valid = app
        .auth
        .clone()
        .validate_token(ValidateTokenRequest { access_token: tokens.access_token.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(valid.user_id, user.id);
    assert!(!valid.session_id.is_empty());
    let expire = valid.expire_time.unwrap().seconds;
    let now = chrono::Utc::now().timestamp();
    assert!((now + 890..=now + 905).contains(&expire));

    let err = app.auth.clone().validate_token(ValidateTokenRequest { access_token: "x.y.z".into() }).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_TOKEN");
    let err = app.auth.clone().validate_token(ValidateTokenRequest { access_token: "".into() }).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    // A refresh token is not an access token.
    let err = app
        .auth
        .clone()
        .validate_token(ValidateTokenRequest { access_token: tokens.refresh_token.clone() })
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_TOKEN");

    app.auth.clone().logout(LogoutRequest { refresh_token: tokens.refresh_token }).await.unwrap();
    let err =
        app.auth.clone().validate_token(ValidateTokenRequest { access_token: tokens.access_token }).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
}

#[tokio::test]
async fn a_restarted_instance_signs_with_a_new_key_and_old_tokens_still_verify() {
    let db = testkit::test_database::TestDatabase::new().await;
    let first = testkit::spawn_auth(testkit::auth_config(&db)).await;
    let mut client = auth_service_client::AuthServiceClient::new(testkit::channel(first.addr).await);
    let tokens = client
        .sign_up(SignUpRequest { email: "uma@example.com".into(), password: testkit::PASSWORD.into() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    first.stop().await.unwrap();

    let second = testkit::spawn_auth(testkit::auth_config(&db)).await;
    let mut client = auth_service_client::AuthServiceClient::new(testkit::channel(second.addr).await);
    let keys = client.get_jwks(GetJwksRequest {}).await.unwrap().into_inner().keys;
    assert_eq!(keys.len(), 2, "the stopped instance's key verifies until its tokens expire");
    client.get_current_user(authed(GetCurrentUserRequest {}, &tokens.access_token)).await.unwrap();
    let retired: i64 =
        sqlx::query_scalar("SELECT count(*) FROM signing_keys WHERE retired_at > now() + interval '800 seconds'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(retired, 1, "the development key of the stopped instance retires after one access lifetime");
}

#[tokio::test]
async fn an_instance_with_a_retired_key_refuses_to_start() {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use std::os::unix::fs::PermissionsExt;
    let db = testkit::test_database::TestDatabase::new().await;
    let dir = std::env::temp_dir().join(format!("todo-key-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key.pem");
    let key = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    std::fs::write(&path, key.to_pkcs8_pem(Default::default()).unwrap().as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = testkit::auth_config(&db);
    config.signing_key_file = Some(path);

    let first = testkit::spawn_auth(config.clone()).await;
    // A call is answered once the start-up steps (the key's registration) are done.
    let mut client = auth_service_client::AuthServiceClient::new(testkit::channel(first.addr).await);
    client.get_jwks(GetJwksRequest {}).await.unwrap();
    let kid = auth_service::signing_key::thumbprint(&key.verifying_key().to_bytes());
    first.stop().await.unwrap();
    assert!(auth_service::signing_key::retire(&db.pool.clone().into(), &kid, std::time::Duration::ZERO).await.unwrap());
    let again = testkit::spawn_auth(config).await;
    // The start-up steps run while the port already answers; the retired key ends them.
    let err = tokio::time::timeout(std::time::Duration::from_secs(10), again.wait())
        .await
        .expect("serve() returns by itself")
        .unwrap_err();
    assert!(format!("{err:#}").contains("was retired"), "{err:#}");
    let retired: bool = sqlx::query_scalar("SELECT retired_at IS NOT NULL FROM signing_keys WHERE kid = $1")
        .bind(&kid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(retired, "still retired");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn auth_service_itself_refuses_a_retired_keys_tokens_within_a_second() {
    // "A retired key stops verifying everywhere": auth-service's own authenticated calls too.
    let app = TestApp::spawn().await;
    let (_, tokens) = app.sign_up("retired@example.com").await;
    let me = || {
        let mut auth = app.auth.clone();
        let request = authed(GetCurrentUserRequest {}, &tokens.access_token);
        async move { auth.get_current_user(request).await }
    };
    me().await.unwrap();
    let kid = jsonwebtoken::decode_header(&tokens.access_token).unwrap().kid.unwrap();
    assert!(auth_service::signing_key::retire(&app.db.pool.clone().into(), &kid, Duration::ZERO).await.unwrap());
    testkit::refused_within(Duration::from_secs(1), Code::Unauthenticated, "INVALID_TOKEN", me).await;
    let validate = ValidateTokenRequest { access_token: tokens.access_token.clone() };
    let err = app.auth.clone().validate_token(validate).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_TOKEN");
}

/// `auth-service retire-key` run as the binary, with `args`, on `db`: (exit code, stdout+stderr).
async fn retire_key_command(db: &testkit::test_database::TestDatabase, args: &[&str]) -> (i32, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_auth-service"))
        .arg("retire-key")
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("DATABASE_DIRECT_URL")
        .env_remove("DB_POOL_MODE")
        .output()
        .await
        .expect("the auth-service binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code().expect("an exit code"), text)
}

#[tokio::test]
async fn the_retire_key_command_schedules_the_retirement_and_refuses_bad_arguments() {
    let app = TestApp::spawn().await;
    let (_, tokens) = app.sign_up("rotate@example.com").await;
    let kid = jsonwebtoken::decode_header(&tokens.access_token).unwrap().kid.unwrap();
    let retired_in = || async {
        let seconds: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM retired_at - now())::float8 FROM signing_keys WHERE kid = $1",
        )
        .bind(&kid)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        seconds
    };
    for bad in [&[][..], &["some-kid", "soon"][..]] {
        let (code, text) = retire_key_command(&app.db, bad).await;
        assert_eq!(code, 2, "{bad:?}: {text}");
        assert!(text.contains("retire-key"), "a usage line: {text}");
    }
    let (code, text) = retire_key_command(&app.db, &["no-such-kid"]).await;
    assert_ne!(code, 0, "an unknown kid is an error: {text}");
    assert_eq!(retired_in().await, None, "nothing retired yet");

    let (code, text) = retire_key_command(&app.db, &[&kid, "900"]).await;
    assert_eq!(code, 0, "{text}");
    let seconds = retired_in().await.expect("retired_at is set");
    assert!((890.0..=900.0).contains(&seconds), "retires in {seconds} s, not 900");
    // Until then its tokens still work.
    app.auth.clone().get_current_user(authed(GetCurrentUserRequest {}, &tokens.access_token)).await.unwrap();
}
