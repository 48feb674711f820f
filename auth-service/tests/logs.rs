//! No password, token or hash reaches the logs during a full session, even at debug level.
//!
//! A test binary of its own: it installs the process-wide subscriber (`testkit::logs`).

use testkit::{PASSWORD, authed};
use todo_proto::auth::v1::*;

#[tokio::test]
async fn no_password_token_or_hash_reaches_the_logs() {
    let logs = testkit::logs::capture(tracing::Level::DEBUG);

    let app = testkit::TestApp::spawn().await;
    let mut auth = app.auth.clone();
    let (_, tokens) = app.sign_up("secret@example.com").await;
    let mut secrets = vec![PASSWORD.to_string(), "another secret pw".into(), "wrong horse".into()];
    secrets.push(tokens.access_token.clone());
    secrets.push(tokens.refresh_token.clone());
    let mut errors = Vec::new();
    errors.push(
        auth.login(LoginRequest { email: "secret@example.com".into(), password: "wrong horse".into() })
            .await
            .unwrap_err(),
    );
    let pair = auth
        .refresh_token(RefreshTokenRequest { refresh_token: tokens.refresh_token.clone() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    secrets.push(pair.access_token.clone());
    secrets.push(pair.refresh_token.clone());
    auth.validate_token(ValidateTokenRequest { access_token: pair.access_token.clone() }).await.unwrap();
    let changed = auth
        .change_password(authed(
            ChangePasswordRequest { current_password: PASSWORD.into(), new_password: "another secret pw".into() },
            &pair.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    secrets.push(changed.access_token.clone());
    secrets.push(changed.refresh_token.clone());
    // A reused refresh token and a bad token, for the error paths.
    sqlx::query("UPDATE refresh_tokens SET spent_at = spent_at - interval '1 hour' WHERE spent_at IS NOT NULL")
        .execute(&app.db.pool)
        .await
        .unwrap();
    errors.push(
        auth.refresh_token(RefreshTokenRequest { refresh_token: tokens.refresh_token.clone() }).await.unwrap_err(),
    );
    errors.push(auth.get_current_user(authed(GetCurrentUserRequest {}, "not.a.token")).await.unwrap_err());
    // A spent access token and a password that is too long, each echoed nowhere.
    errors.push(auth.get_current_user(authed(GetCurrentUserRequest {}, &pair.access_token)).await.unwrap_err());
    let long = format!("{PASSWORD}{}", "x".repeat(80));
    secrets.push(long.clone());
    errors.push(auth.sign_up(SignUpRequest { email: "other@example.com".into(), password: long }).await.unwrap_err());
    app.tasks
        .clone()
        .create_task(authed(
            todo_proto::task::v1::CreateTaskRequest { title: "t".into(), ..Default::default() },
            &changed.access_token,
        ))
        .await
        .unwrap();
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users").fetch_one(&app.db.pool).await.unwrap();
    secrets.push(hash);
    auth.delete_account(authed(DeleteAccountRequest { password: "another secret pw".into() }, &changed.access_token))
        .await
        .unwrap();

    let text = logs.text();
    assert!(text.contains("signed up") && text.contains("account deleted"), "the capture works:\n{text}");
    // The access log: one line per call with method, code, latency and request id.
    assert!(
        text.lines().any(|l| l.contains("method=/todo.auth.v1.AuthService/Login")
            && l.contains("code=Unauthenticated")
            && l.contains("latency_ms=")
            && l.contains("request_id=")),
        "an access-log line for the failed login"
    );
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a secret ({} chars) appears in the logs", secret.len());
    }
    // The start-up line shows the database settings with the URL's password masked.
    let db_password = app
        .db
        .url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('@').next())
        .and_then(|user| user.split_once(':').map(|(_, password)| password.to_string()));
    assert!(text.contains("starting auth-service"), "the start-up line was captured");
    // The private test server always has one; a DATABASE_URL of your own may not.
    if let Some(db_password) = db_password {
        assert!(!text.contains(&db_password), "the DATABASE_URL password appears in the logs");
    }
    // Operators read the signing kid from the log (it is what `retire-key` takes), and a start
    // without SIGNING_KEY_FILE says it made a fresh key.
    let kid = auth.get_jwks(GetJwksRequest {}).await.unwrap().into_inner().keys[0].kid.clone();
    assert!(text.lines().any(|l| l.contains("signing access tokens") && l.contains(&kid)), "the kid is logged");
    assert!(text.contains("SIGNING_KEY_FILE is not set"), "a fresh key is announced");
    // Nor in any error a client got: message, details or metadata.
    assert_eq!(errors.len(), 5);
    for error in &errors {
        let all = format!("{error:?}");
        for secret in &secrets {
            assert!(!all.contains(secret.as_str()), "a secret ({} chars) appears in an error: {all}", secret.len());
        }
    }
    // Any JWT-looking or bcrypt-looking string at all.
    assert!(!text.contains("eyJ"), "a JWT appears in the logs");
    assert!(!text.contains("$2b$"), "a bcrypt hash appears in the logs");
}
