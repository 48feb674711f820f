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
        ("carol@example.com", &*"p".repeat(73), vec!["password"]),
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
        .sign_up(SignUpRequest { email: "dave@example.com".into(), password: "p".repeat(72) })
        .await
        .unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&app.db.pool).await.unwrap();
    assert_eq!(users, 1);
}
