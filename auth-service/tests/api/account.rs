use testkit::{PASSWORD, TestApp, assert_error, authed, bad_fields};
use todo_proto::auth::v1::*;
use todo_proto::task::v1::CreateTaskRequest;
use tonic::Code;

#[tokio::test]
async fn get_current_user_needs_a_token() {
    let app = TestApp::spawn().await;
    let (user, tokens) = app.sign_up("lee@example.com").await;
    let me = app.auth.clone().get_current_user(authed(GetCurrentUserRequest {}, &tokens.access_token)).await.unwrap();
    assert_eq!(me.into_inner().user.unwrap(), user);
    let err = app.auth.clone().get_current_user(GetCurrentUserRequest {}).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "MISSING_TOKEN");
    let err = app.auth.clone().get_current_user(authed(GetCurrentUserRequest {}, "garbage")).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_TOKEN");
}

#[tokio::test]
async fn logout_all_revokes_every_session_of_the_caller_only() {
    let app = TestApp::spawn().await;
    let (_, first) = app.sign_up("mia@example.com").await;
    let second = app
        .auth
        .clone()
        .login(LoginRequest { email: "mia@example.com".into(), password: PASSWORD.into() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let (_, other_user) = app.sign_up("ned@example.com").await;
    let revoked = app.auth.clone().logout_all(authed(LogoutAllRequest {}, &first.access_token)).await.unwrap();
    assert_eq!(revoked.into_inner().revoked_sessions, 2);
    for tokens in [&first, &second] {
        let err = app
            .auth
            .clone()
            .get_current_user(authed(GetCurrentUserRequest {}, &tokens.access_token))
            .await
            .unwrap_err();
        assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
        let err = app
            .auth
            .clone()
            .refresh_token(RefreshTokenRequest { refresh_token: tokens.refresh_token.clone() })
            .await
            .unwrap_err();
        assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
    }
    app.auth.clone().get_current_user(authed(GetCurrentUserRequest {}, &other_user.access_token)).await.unwrap();
}

#[tokio::test]
async fn change_password_revokes_old_sessions_and_returns_a_new_pair() {
    let app = TestApp::spawn().await;
    let (_, old) = app.sign_up("oli@example.com").await;
    // A second device (or a thief) holds a session of its own: the change must end it too.
    let other_device = app
        .auth
        .clone()
        .login(LoginRequest { email: "oli@example.com".into(), password: PASSWORD.into() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let err = app
        .auth
        .clone()
        .change_password(authed(
            ChangePasswordRequest {
                current_password: "wrong password".into(),
                new_password: "brand new password".into(),
            },
            &old.access_token,
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    let err = app
        .auth
        .clone()
        .change_password(authed(
            ChangePasswordRequest { current_password: PASSWORD.into(), new_password: "short".into() },
            &old.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["new_password"]);

    let new = app
        .auth
        .clone()
        .change_password(authed(
            ChangePasswordRequest { current_password: PASSWORD.into(), new_password: "brand new password".into() },
            &old.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    for ended in [&old, &other_device] {
        let err =
            app.auth.clone().get_current_user(authed(GetCurrentUserRequest {}, &ended.access_token)).await.unwrap_err();
        assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
        let refresh = RefreshTokenRequest { refresh_token: ended.refresh_token.clone() };
        let err = app.auth.clone().refresh_token(refresh).await.unwrap_err();
        assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
    }
    app.auth.clone().get_current_user(authed(GetCurrentUserRequest {}, &new.access_token)).await.unwrap();
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE u.email = 'oli@example.com' AND s.revoked_at IS NULL",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(live, 1, "only the session the change opened is live");
    let err = app
        .auth
        .clone()
        .login(LoginRequest { email: "oli@example.com".into(), password: PASSWORD.into() })
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    app.auth
        .clone()
        .login(LoginRequest { email: "oli@example.com".into(), password: "brand new password".into() })
        .await
        .unwrap();
}

#[tokio::test]
async fn delete_account_needs_the_password_and_cascades_to_tasks() {
    let app = TestApp::spawn().await;
    let (user, tokens) = app.sign_up("pat@example.com").await;
    let (_, other) = app.sign_up("quinn@example.com").await;
    for t in [&tokens, &other] {
        app.tasks
            .clone()
            .create_task(authed(CreateTaskRequest { title: "a task".into(), ..Default::default() }, &t.access_token))
            .await
            .unwrap();
    }
    let err = app
        .auth
        .clone()
        .delete_account(authed(DeleteAccountRequest { password: "wrong password".into() }, &tokens.access_token))
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    app.auth
        .clone()
        .delete_account(authed(DeleteAccountRequest { password: PASSWORD.into() }, &tokens.access_token))
        .await
        .unwrap();
    let count = |sql: &'static str| {
        let pool = app.db.pool.clone();
        let id = user.id.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).bind(id).fetch_one(&pool).await.unwrap() }
    };
    assert_eq!(count("SELECT count(*) FROM users WHERE id = $1::uuid").await, 0);
    assert_eq!(count("SELECT count(*) FROM tasks WHERE user_id = $1::uuid").await, 0);
    assert_eq!(count("SELECT count(*) FROM sessions WHERE user_id = $1::uuid").await, 0);
    let remaining: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(remaining, 1, "the other user's task stays");
    let err =
        app.auth.clone().get_current_user(authed(GetCurrentUserRequest {}, &tokens.access_token)).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
    let err = app
        .auth
        .clone()
        .login(LoginRequest { email: "pat@example.com".into(), password: PASSWORD.into() })
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
}

#[tokio::test]
async fn an_expired_refresh_token_is_refused() {
    let app = TestApp::spawn().await;
    let (_, tokens) = app.sign_up("rae@example.com").await;
    sqlx::query("UPDATE refresh_tokens SET expires_at = now() - interval '1 second'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let err =
        app.auth.clone().refresh_token(RefreshTokenRequest { refresh_token: tokens.refresh_token }).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "TOKEN_EXPIRED");
}

#[tokio::test]
async fn housekeeping_deletes_what_no_longer_matters_and_nothing_else() {
    let app = TestApp::spawn().await;
    let (live_user, live) = app.sign_up("live@example.com").await;
    let (revoked_user, _) = app.sign_up("revoked@example.com").await;
    let (stale_user, _) = app.sign_up("stale@example.com").await;
    let pool = &app.db.pool;
    let exec = |sql: &'static str, user: String| async move {
        sqlx::query(sql).bind(user).execute(pool).await.unwrap();
    };
    exec(
        "UPDATE sessions SET revoked_at = now() - interval '40 days', revoked_reason = 'logout' WHERE user_id = $1::uuid",
        revoked_user.id.clone(),
    )
    .await;
    exec("UPDATE sessions SET created_at = now() - interval '40 days' WHERE user_id = $1::uuid", stale_user.id.clone())
        .await;
    exec(
        "UPDATE refresh_tokens SET expires_at = now() - interval '2 days'
         WHERE session_id IN (SELECT id FROM sessions WHERE user_id = $1::uuid)",
        stale_user.id.clone(),
    )
    .await;
    sqlx::query("INSERT INTO login_throttle (key, window_start, failures) VALUES ('account:x@example.com', now() - interval '1 hour', 3)")
        .execute(pool)
        .await
        .unwrap();

    auth_service::housekeeping::run_once(&pool.clone().into(), std::time::Duration::from_secs(900)).await.unwrap();

    let sessions_of = |user: String| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sessions WHERE user_id = $1::uuid")
            .bind(user)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(sessions_of(live_user.id.clone()).await, 1, "a live session stays");
    assert_eq!(sessions_of(revoked_user.id).await, 0, "revoked 40 days ago");
    assert_eq!(sessions_of(stale_user.id).await, 0, "no refresh token valid any more");
    let tokens: i64 = sqlx::query_scalar("SELECT count(*) FROM refresh_tokens").fetch_one(pool).await.unwrap();
    assert_eq!(tokens, 1, "only the live session's refresh token is left");
    let throttle: Vec<String> =
        sqlx::query_scalar("SELECT key FROM login_throttle ORDER BY key").fetch_all(pool).await.unwrap();
    // The ended window is gone; the window the three sign-ups above opened is still running.
    assert_eq!(throttle, ["sign_up:127.0.0.1"]);
    // The live session still works end to end.
    app.auth.clone().get_current_user(authed(GetCurrentUserRequest {}, &live.access_token)).await.unwrap();
    app.auth.clone().refresh_token(RefreshTokenRequest { refresh_token: live.refresh_token }).await.unwrap();
}
