use testkit::{TestApp, assert_error, bad_fields, domain};
use todo_proto::auth::v1::SignUpRequest;
use tonic::Code;

#[tokio::test]
async fn sign_up_normalises_email_and_stores_only_a_bcrypt_hash() {
    let app = TestApp::spawn().await;
    let response = app
        .auth
        .clone()
        .sign_up(SignUpRequest { email: "  Alice@Example.COM ".into(), password: "s3cret-password".into() })
        .await
        .unwrap()
        .into_inner();
    let user = response.user.unwrap();
    assert_eq!(user.email, "alice@example.com");
    assert!(user.create_time.is_some() && user.update_time.is_some());
    let tokens = response.tokens.unwrap();
    assert_eq!(tokens.token_type, "Bearer");
    assert_eq!(tokens.expires_in, 900);
    assert_eq!(tokens.access_token.split('.').count(), 3, "a JWT");
    assert!(!tokens.refresh_token.is_empty());

    let (email, hash): (String, String) = sqlx::query_as("SELECT email, password_hash FROM users WHERE id = $1::uuid")
        .bind(&user.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(email, "alice@example.com");
    assert!(hash.starts_with("$2"), "bcrypt hash");
    assert!(bcrypt::verify("s3cret-password", &hash).unwrap());
    // The refresh token is stored only as its SHA-256 (computed here by PostgreSQL, not by our
    // code), and no column anywhere in its row holds its text.
    let (hashed, plain): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE r.token_hash = sha256(convert_to($1, 'UTF8'))),
                count(*) FILTER (WHERE strpos(r::text, $1) > 0)
         FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id WHERE s.user_id = $2::uuid",
    )
    .bind(&tokens.refresh_token)
    .bind(&user.id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!((hashed, plain), (1, 0), "one row, keyed by SHA-256 of the token, without its text");
}

#[tokio::test]
async fn email_is_unique_case_insensitively() {
    let app = TestApp::spawn().await;
    app.sign_up("bob@example.com").await;
    let err = app
        .auth
        .clone()
        .sign_up(SignUpRequest { email: "BOB@example.com".into(), password: "another-password".into() })
        .await
        .unwrap_err();
    assert_error(&err, Code::AlreadyExists, "EMAIL_TAKEN");
    assert_eq!(domain(&err), "todo.auth");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(users, 1);
}

#[tokio::test]
async fn invalid_fields_are_named_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let cases = [
        ("not-an-email", "good-password", vec!["email"]),
        ("", "good-password", vec!["email"]),
        (&*format!("{}@example.com", "a".repeat(250)), "good-password", vec!["email"]),
        ("carol@example.com", "short", vec!["password"]),
        // 73 bytes: bcrypt would silently ignore the tail, so it is refused.
        (
            "carol@example.com",
            "correct horse battery staple, purple monkey dishwasher, seventy-two bytes",
            vec!["password"],
        ),
        ("nope", "", vec!["email", "password"]),
    ];
    for (email, password, fields) in cases {
        let err = app
            .auth
            .clone()
            .sign_up(SignUpRequest { email: email.into(), password: password.into() })
            .await
            .unwrap_err();
        assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(bad_fields(&err), fields, "{email:?}");
        if !password.is_empty() {
            assert!(!err.message().contains(password), "the password must not be echoed");
        }
    }
    // 72 bytes exactly is accepted.
    app.auth
        .clone()
        .sign_up(SignUpRequest {
            email: "dave@example.com".into(),
            password: "correct horse battery staple, purple monkey dishwasher, seventy-two byte".into(),
        }) // 72 bytes
        .await
        .unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(users, 1);
}

#[tokio::test]
async fn common_and_personal_passwords_are_refused_at_sign_up_and_change() {
    use todo_proto::auth::v1::{ChangePasswordRequest, LoginRequest};
    let app = TestApp::spawn().await;
    for (email, password) in [
        ("kate@example.com", "password123"),
        ("kate@example.com", "qwertyuiop"),
        ("kate@example.com", "kate@example.com"),
        ("katherine@example.com", "katherine"),
    ] {
        let err = app
            .auth
            .clone()
            .sign_up(SignUpRequest { email: email.into(), password: password.into() })
            .await
            .unwrap_err();
        assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(bad_fields(&err), ["password"], "{password:?}");
        assert!(err.message().contains("too common"), "the message says why: {err:?}");
        assert!(!err.message().contains(password), "the password is not echoed");
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(users, 0, "nothing written");

    // ChangePassword to a common one: refused, and the old password still works.
    let (_, tokens) = app.sign_up("kate@example.com").await;
    let change = ChangePasswordRequest { current_password: testkit::PASSWORD.into(), new_password: "iloveyou1".into() };
    let err = app.auth.clone().change_password(testkit::authed(change, &tokens.access_token)).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(bad_fields(&err), ["new_password"]);
    let login = LoginRequest { email: "kate@example.com".into(), password: testkit::PASSWORD.into() };
    app.auth.clone().login(login).await.expect("the old password still logs in");
}

#[tokio::test]
async fn passwords_are_normalised_so_any_unicode_form_logs_in_and_old_hashes_are_upgraded() {
    use todo_proto::auth::v1::LoginRequest;
    let app = TestApp::spawn().await;
    // Composed (ñ, Ü, ï as one code point each) and decomposed (a letter and a combining mark),
    // as some keyboards and macOS send them.
    let composed = "Contrase\u{f1}a-\u{dc}n\u{ef}code-1";
    let decomposed = "Contrasen\u{303}a-U\u{308}ni\u{308}code-1";
    assert_ne!(composed, decomposed);
    app.auth
        .clone()
        .sign_up(SignUpRequest { email: "nina@example.com".into(), password: composed.into() })
        .await
        .unwrap();
    let login = |password: &str| LoginRequest { email: "nina@example.com".into(), password: password.into() };
    app.auth.clone().login(login(decomposed)).await.expect("the decomposed form logs in");
    app.auth.clone().login(login(composed)).await.expect("the composed form logs in");

    // A hash made before normalisation, of the decomposed form as typed: it still logs in, and
    // is replaced by a hash of the NFKC form.
    let old = bcrypt::hash(decomposed, 4).unwrap();
    sqlx::query("UPDATE users SET password_hash = $1 WHERE email = 'nina@example.com'")
        .bind(&old)
        .execute(&app.db.pool)
        .await
        .unwrap();
    app.auth.clone().login(login(decomposed)).await.expect("a hash of the form as typed still works");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'nina@example.com'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
        if hash != old {
            assert!(bcrypt::verify(composed, &hash).unwrap(), "the new hash is of the NFKC form");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the hash of the form as typed was not replaced");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.auth.clone().login(login(composed)).await.expect("and now the composed form logs in too");
}

#[tokio::test]
async fn one_account_per_address_whatever_its_unicode_form_and_stored_forms_are_brought_in_line() {
    use todo_proto::auth::v1::LoginRequest;
    let db = testkit::test_database::TestDatabase::new().await;
    // Two accounts stored before addresses were canonical, the same address once normalised,
    // and a third alone: a start rewrites the third and the first, and reports the second.
    let old_server = testkit::spawn_auth(testkit::auth_config(&db)).await;
    let mut auth =
        todo_proto::auth::v1::auth_service_client::AuthServiceClient::new(testkit::channel(old_server.addr).await);
    for email in ["ana@example.com", "bo@example.com", "cy@example.com"] {
        auth.sign_up(SignUpRequest { email: email.into(), password: testkit::PASSWORD.into() }).await.unwrap();
    }
    old_server.stop().await.unwrap();
    let set = |from: &'static str, to: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("UPDATE users SET email = $2 WHERE email = $1")
                .bind(from)
                .bind(to)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    set("ana@example.com", "\u{ff41}\u{ff4e}\u{ff41}@example.com").await; // full-width "ana"
    set("bo@example.com", "ana@\u{ff45}xample.com").await; // full-width "e" in the domain
    set("cy@example.com", "cy@b\u{fc}cher.example").await;
    let server = testkit::spawn_auth(testkit::auth_config(&db)).await;
    let mut auth =
        todo_proto::auth::v1::auth_service_client::AuthServiceClient::new(testkit::channel(server.addr).await);
    // Start-up has run once the server answers a call.
    let login = |email: &str| LoginRequest { email: email.into(), password: testkit::PASSWORD.into() };
    auth.login(login("cy@xn--bcher-kva.example")).await.expect("the IDNA form logs in");
    let emails: Vec<String> =
        sqlx::query_scalar("SELECT email FROM users ORDER BY email").fetch_all(&db.pool).await.unwrap();
    assert!(emails.contains(&"cy@xn--bcher-kva.example".to_owned()), "{emails:?}");
    let canonical = emails.iter().filter(|e| *e == "ana@example.com").count();
    assert_eq!(canonical, 1, "one of the two became ana@example.com, the other is left as it was: {emails:?}");
    let conflicts: Vec<String> =
        sqlx::query_scalar("SELECT canonical_email FROM email_conflicts").fetch_all(&db.pool).await.unwrap();
    assert_eq!(conflicts, ["ana@example.com"], "the other is reported, never merged or deleted");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&db.pool).await.unwrap();
    assert_eq!(users, 3);

    // Any equivalent form logs in; none can sign up again.
    for form in ["ANA@EXAMPLE.COM", "\u{ff41}\u{ff4e}\u{ff41}@example.com", "ana@\u{ff45}xample.com"] {
        auth.login(login(form)).await.unwrap_or_else(|e| panic!("{form:?} logs in: {e:?}"));
        let err =
            auth.sign_up(SignUpRequest { email: form.into(), password: "another secret pw".into() }).await.unwrap_err();
        assert_error(&err, Code::AlreadyExists, "EMAIL_TAKEN");
    }
    for form in ["\u{212a}ate@example.com", "kate@\u{ff45}xample.com"] {
        let first = form == "\u{212a}ate@example.com";
        let result = auth.sign_up(SignUpRequest { email: form.into(), password: "another secret pw".into() }).await;
        if first {
            assert_eq!(result.unwrap().into_inner().user.unwrap().email, "kate@example.com");
        } else {
            assert_error(&result.unwrap_err(), Code::AlreadyExists, "EMAIL_TAKEN");
        }
    }
}
