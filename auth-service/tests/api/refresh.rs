use testkit::{TestApp, assert_error, authed};
use todo_proto::auth::v1::{GetCurrentUserRequest, LogoutRequest, RefreshTokenRequest};
use tonic::Code;

#[tokio::test]
async fn refresh_rotates_and_the_new_pair_works() {
    let app = TestApp::spawn().await;
    let (user, first) = app.sign_up("hal@example.com").await;
    let second = app
        .auth
        .clone()
        .refresh_token(RefreshTokenRequest { refresh_token: first.refresh_token.clone() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    let me = app
        .auth
        .clone()
        .get_current_user(authed(GetCurrentUserRequest {}, &second.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.user.unwrap().id, user.id);
    // The old one is spent.
    let spent: bool = sqlx::query_scalar("SELECT spent_at IS NOT NULL FROM refresh_tokens ORDER BY created_at LIMIT 1")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(spent);
}

#[tokio::test]
async fn a_spent_token_presented_after_the_grace_window_revokes_the_session() {
    let db = testkit::test_database::TestDatabase::new().await;
    let mut config = testkit::auth_config(&db);
    config.refresh_reuse_grace = std::time::Duration::ZERO;
    let server = testkit::spawn_auth(config).await;
    let mut auth =
        todo_proto::auth::v1::auth_service_client::AuthServiceClient::new(testkit::channel(server.addr).await);
    let signed_up = auth
        .sign_up(todo_proto::auth::v1::SignUpRequest {
            email: "ivy@example.com".into(),
            password: testkit::PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let stolen = signed_up.refresh_token.clone();
    // The legitimate client rotates...
    let legit = auth
        .refresh_token(RefreshTokenRequest { refresh_token: stolen.clone() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // ...then the thief presents the spent token.
    let err = auth.refresh_token(RefreshTokenRequest { refresh_token: stolen }).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "REFRESH_TOKEN_REUSED");
    // The whole session is dead: the legitimate successor too, and its access token.
    let err = auth.refresh_token(RefreshTokenRequest { refresh_token: legit.refresh_token }).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
    let err = auth.get_current_user(authed(GetCurrentUserRequest {}, &legit.access_token)).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
    let reason: String = sqlx::query_scalar("SELECT revoked_reason FROM sessions").fetch_one(&db.pool).await.unwrap();
    assert_eq!(reason, "refresh_token_reused");
}

#[tokio::test]
async fn concurrent_refreshes_within_the_grace_window_both_succeed() {
    let app = TestApp::spawn().await;
    let (_, tokens) = app.sign_up("jack@example.com").await;
    let (mut first, mut second) = (app.auth.clone(), app.auth.clone());
    let (a, b) = tokio::join!(
        first.refresh_token(RefreshTokenRequest { refresh_token: tokens.refresh_token.clone() }),
        second.refresh_token(RefreshTokenRequest { refresh_token: tokens.refresh_token.clone() }),
    );
    let (a, b) = (a.unwrap().into_inner().tokens.unwrap(), b.unwrap().into_inner().tokens.unwrap());
    for pair in [a, b] {
        app.auth.clone().get_current_user(authed(GetCurrentUserRequest {}, &pair.access_token)).await.unwrap();
        app.auth.clone().refresh_token(RefreshTokenRequest { refresh_token: pair.refresh_token }).await.unwrap();
    }
}

#[tokio::test]
async fn unknown_and_empty_refresh_tokens() {
    let app = TestApp::spawn().await;
    let err =
        app.auth.clone().refresh_token(RefreshTokenRequest { refresh_token: "nonsense".into() }).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_TOKEN");
    let err = app.auth.clone().refresh_token(RefreshTokenRequest { refresh_token: "".into() }).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn logout_revokes_the_session_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let (_, tokens) = app.sign_up("kim@example.com").await;
    for _ in 0..2 {
        app.auth.clone().logout(LogoutRequest { refresh_token: tokens.refresh_token.clone() }).await.unwrap();
    }
    app.auth.clone().logout(LogoutRequest { refresh_token: "never-issued".into() }).await.unwrap();
    let err =
        app.auth.clone().refresh_token(RefreshTokenRequest { refresh_token: tokens.refresh_token }).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
    let err =
        app.auth.clone().get_current_user(authed(GetCurrentUserRequest {}, &tokens.access_token)).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
}

#[tokio::test]
async fn the_grace_window_yields_only_a_few_extra_pairs() {
    let app = TestApp::spawn().await;
    let (_, tokens) = app.sign_up("leo@example.com").await;
    let mut auth = app.auth.clone();
    let request = || RefreshTokenRequest { refresh_token: tokens.refresh_token.clone() };
    // The first exchange and two more within the window (three tabs) succeed...
    for _ in 0..3 {
        auth.refresh_token(request()).await.unwrap();
    }
    // ...a fourth is treated as reuse.
    let err = auth.refresh_token(request()).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "REFRESH_TOKEN_REUSED");
}

/// Refreshes `token`: the new pair, or the status.
async fn refresh(app: &TestApp, token: &str) -> Result<todo_proto::auth::v1::TokenPair, tonic::Status> {
    let request = RefreshTokenRequest { refresh_token: token.into() };
    Ok(app.auth.clone().refresh_token(request).await?.into_inner().tokens.unwrap())
}

#[tokio::test]
async fn a_session_ends_after_a_week_unused_and_at_30_days_however_often_it_is_used() {
    let app = TestApp::spawn().await;
    // Unused for more than SESSION_IDLE_TIMEOUT_SECONDS (7 days): its last token was issued 8 days ago.
    let (_, tokens) = app.sign_up("ivy@example.com").await;
    let tokens = refresh(&app, &tokens.refresh_token).await.expect("a session in use refreshes");
    sqlx::query("UPDATE refresh_tokens SET created_at = now() - interval '8 days' WHERE spent_at IS NULL")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let err = refresh(&app, &tokens.refresh_token).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "SESSION_EXPIRED");
    assert!(err.message().contains("inactivity"), "{err:?}");
    let reason: String =
        sqlx::query_scalar("SELECT revoked_reason FROM sessions").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(reason, "session_expired");
    crate::refused_by_task_service(&app, &tokens.access_token).await;

    // In use every day, but opened more than SESSION_MAX_LIFETIME_SECONDS (30 days) ago.
    let login =
        todo_proto::auth::v1::LoginRequest { email: "ivy@example.com".into(), password: testkit::PASSWORD.into() };
    let mut tokens = app.auth.clone().login(login).await.unwrap().into_inner().tokens.unwrap();
    for _ in 0..3 {
        tokens = refresh(&app, &tokens.refresh_token).await.expect("refreshed while in use");
    }
    sqlx::query("UPDATE sessions SET created_at = now() - interval '29 days 23 hours' WHERE revoked_at IS NULL")
        .execute(&app.db.pool)
        .await
        .unwrap();
    tokens = refresh(&app, &tokens.refresh_token).await.expect("an hour of lifetime left");
    let (expires, ends): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT r.expires_at, s.created_at + interval '30 days' FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id
         WHERE s.revoked_at IS NULL AND r.spent_at IS NULL",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(expires <= ends, "a refresh token never outlives its session: {expires} > {ends}");
    // As it would be 30 days after the login: the session's and its token's ends have passed
    // (the token's is capped at the session's, and must not answer TOKEN_EXPIRED first).
    for aged in [
        "UPDATE sessions SET created_at = now() - interval '30 days 1 minute' WHERE revoked_at IS NULL",
        "UPDATE refresh_tokens SET expires_at = now() - interval '1 minute' WHERE spent_at IS NULL",
    ] {
        sqlx::query(aged).execute(&app.db.pool).await.unwrap();
    }
    let err = refresh(&app, &tokens.refresh_token).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "SESSION_EXPIRED");
    assert!(err.message().contains("maximum lifetime"), "{err:?}");
    crate::refused_by_task_service(&app, &tokens.access_token).await;
}
