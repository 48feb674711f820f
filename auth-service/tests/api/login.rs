use std::time::Instant;
use testkit::{PASSWORD, TestApp, assert_error, bad_fields};
use todo_proto::auth::v1::{LoginRequest, SignUpRequest};
use tonic::Code;

#[tokio::test]
async fn login_with_the_right_password_opens_a_new_session() {
    let app = TestApp::spawn().await;
    let (user, _) = app.sign_up("erin@example.com").await;
    let response = app
        .auth
        .clone()
        .login(LoginRequest { email: " ERIN@example.com".into(), password: PASSWORD.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.user.unwrap().id, user.id);
    assert!(response.tokens.is_some());
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1::uuid")
        .bind(&user.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 2, "sign-up and login each open a session");
}

#[tokio::test]
async fn unknown_email_and_wrong_password_look_the_same() {
    let app = TestApp::spawn().await;
    app.sign_up("frank@example.com").await;
    let wrong_password = app
        .auth
        .clone()
        .login(LoginRequest { email: "frank@example.com".into(), password: "wrong password".into() })
        .await
        .unwrap_err();
    let unknown_email = app
        .auth
        .clone()
        .login(LoginRequest { email: "nobody@example.com".into(), password: "wrong password".into() })
        .await
        .unwrap_err();
    assert_error(&wrong_password, Code::Unauthenticated, "INVALID_CREDENTIALS");
    assert_error(&unknown_email, Code::Unauthenticated, "INVALID_CREDENTIALS");
    assert_eq!(wrong_password.message(), unknown_email.message());
}

#[tokio::test]
async fn unknown_email_still_pays_for_a_bcrypt_check() {
    // At cost 10 one bcrypt check takes tens of milliseconds; an unknown email must not be
    // answered much faster than a wrong password (the dummy hash is verified instead).
    let db = testkit::test_database::TestDatabase::new().await;
    let mut config = testkit::auth_config(&db);
    config.bcrypt_cost = 10;
    let server = testkit::spawn_auth(config).await;
    let mut client =
        todo_proto::auth::v1::auth_service_client::AuthServiceClient::new(testkit::channel(server.addr).await);
    client
        .sign_up(todo_proto::auth::v1::SignUpRequest { email: "gina@example.com".into(), password: PASSWORD.into() })
        .await
        .unwrap();
    let time = |email: &'static str| {
        let mut client = client.clone();
        async move {
            let start = Instant::now();
            let err = client
                .login(LoginRequest { email: email.into(), password: "wrong password".into() })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated);
            start.elapsed()
        }
    };
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..3 {
        known.push(time("gina@example.com").await);
        unknown.push(time("nobody@example.com").await);
    }
    let (known, unknown) = (known.iter().min().unwrap(), unknown.iter().min().unwrap());
    assert!(unknown.as_secs_f64() > known.as_secs_f64() * 0.5, "unknown {unknown:?} vs known {known:?}");
}

#[tokio::test]
async fn missing_fields_are_invalid_argument() {
    let app = TestApp::spawn().await;
    let err = app.auth.clone().login(LoginRequest { email: "".into(), password: "".into() }).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&err), ["email", "password"]);
}

#[tokio::test]
async fn a_password_is_never_cut_at_login_either() {
    // bcrypt compares only the first 72 bytes: without our own check, the password plus any
    // suffix would log in.
    let app = TestApp::spawn().await;
    let password = "correct horse battery staple, purple monkey dishwasher, seventy-two byte".to_owned(); // 72 bytes
    let sign_up = SignUpRequest { email: "max@example.com".into(), password: password.clone() };
    app.auth.clone().sign_up(sign_up).await.unwrap();
    for longer in [format!("{password}x"), format!("{password}{password}")] {
        let attempt = LoginRequest { email: "max@example.com".into(), password: longer };
        let err = app.auth.clone().login(attempt).await.unwrap_err();
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    app.auth.clone().login(LoginRequest { email: "max@example.com".into(), password }).await.unwrap();
}

#[tokio::test]
async fn a_password_change_during_a_login_wins_over_the_old_password() {
    // Login checks the hash (a bcrypt's time, ~250 ms) before it opens the session; a password
    // change that commits in between must not leave the old password with a fresh session. The
    // change is made here by SQL, held open until the login has reached its transaction.
    let app = TestApp::spawn().await;
    let (user, _) = app.sign_up("race@example.com").await;
    let mut change = app.db.pool.begin().await.unwrap();
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1::uuid")
        .bind(&user.id)
        .bind("$2b$12$changedchangedchangedchangedchangedchangedchangedchang")
        .execute(&mut *change)
        .await
        .unwrap();
    let mut auth = app.auth.clone();
    let mut login = tokio::spawn(async move {
        auth.login(LoginRequest { email: "race@example.com".into(), password: PASSWORD.into() }).await
    });
    tokio::select! {
        () = testkit::until_waiting_on_locks(&app.db.pool, 1) => {}
        finished = &mut login => panic!("the login finished while a password change was in flight: {finished:?}"),
    }
    change.commit().await.unwrap();
    let err = login.await.unwrap().expect_err("the old password lost to the change");
    assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1::uuid")
        .bind(&user.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1, "only the sign-up's session");
}
