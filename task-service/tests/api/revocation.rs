//! Revocation reaches task-service within a second, also after its listener lost the connection.

use crate::token_minting::{TestKey, user_with_test_key};
use std::time::{Duration, Instant};
use testkit::{PASSWORD, TestApp, assert_error, authed, refused_within};
use todo_proto::auth::v1::*;
use todo_proto::task::v1::{ListTasksRequest, WatchTasksRequest};
use tonic::Code;

/// Asserts that task-service refuses `token` with SESSION_REVOKED within a second.
async fn refused_within_a_second(app: &TestApp, token: &str) {
    let list = || {
        let mut tasks = app.tasks.clone();
        let request = authed(ListTasksRequest::default(), token);
        async move { tasks.list_tasks(request).await }
    };
    refused_within(Duration::from_secs(1), Code::Unauthenticated, "SESSION_REVOKED", list).await;
}

/// Waits (bounded) until task-service's listener connection has issued LISTEN.
async fn wait_until_live(app: &TestApp) {
    let start = Instant::now();
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        if listening > 0 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the listener never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_kind_of_revocation_reaches_task_service_within_a_second() {
    let app = TestApp::spawn().await;
    wait_until_live(&app).await;
    let mut auth = app.auth.clone();

    // Logout.
    let (_, t) = app.sign_up("a@example.com").await;
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &t.access_token)).await.unwrap();
    auth.logout(LogoutRequest { refresh_token: t.refresh_token }).await.unwrap();
    refused_within_a_second(&app, &t.access_token).await;

    // LogoutAll: both sessions.
    let (_, first) = app.sign_up("b@example.com").await;
    let second = auth
        .login(LoginRequest { email: "b@example.com".into(), password: PASSWORD.into() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    auth.logout_all(authed(LogoutAllRequest {}, &first.access_token)).await.unwrap();
    refused_within_a_second(&app, &first.access_token).await;
    refused_within_a_second(&app, &second.access_token).await;

    // ChangePassword: the old session dies, the new pair works.
    let (_, old) = app.sign_up("c@example.com").await;
    let new = auth
        .change_password(authed(
            ChangePasswordRequest { current_password: PASSWORD.into(), new_password: "a new password".into() },
            &old.access_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    refused_within_a_second(&app, &old.access_token).await;
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &new.access_token)).await.unwrap();

    // DeleteAccount: the sessions go by cascade.
    let (_, d) = app.sign_up("d@example.com").await;
    auth.delete_account(authed(DeleteAccountRequest { password: PASSWORD.into() }, &d.access_token)).await.unwrap();
    refused_within_a_second(&app, &d.access_token).await;

    // Refresh-token reuse (after the grace window, simulated by ageing spent_at).
    let (_, e) = app.sign_up("e@example.com").await;
    let rotated = auth
        .refresh_token(RefreshTokenRequest { refresh_token: e.refresh_token.clone() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    sqlx::query("UPDATE refresh_tokens SET spent_at = spent_at - interval '1 hour' WHERE spent_at IS NOT NULL")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let err = auth.refresh_token(RefreshTokenRequest { refresh_token: e.refresh_token }).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "REFRESH_TOKEN_REUSED");
    refused_within_a_second(&app, &rotated.access_token).await;
}

#[tokio::test]
async fn a_lost_listener_connection_falls_back_to_the_database_and_reloads() {
    let app = TestApp::spawn().await;
    wait_until_live(&app).await;
    let (user, t) = app.sign_up("f@example.com").await;
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &t.access_token)).await.unwrap();

    // A revocation whose notification is lost (as if sent while the listener was away)...
    let mut tx = app.db.pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE sessions DISABLE TRIGGER trg_sessions_revoked").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE sessions SET revoked_at = now(), revoked_reason = 'logout' WHERE user_id = $1::uuid")
        .bind(&user.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE sessions ENABLE TRIGGER trg_sessions_revoked").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    // ...and the listener's connection dies.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert!(killed >= 1, "found the listener's connection");
    // Whether the check goes to the database (listener down) or to the reloaded list
    // (listener back), the session is refused...
    refused_within_a_second(&app, &t.access_token).await;
    // ...and still once the listener is back and answers from memory: the list was reloaded.
    wait_until_live(&app).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &t.access_token)).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
}

#[tokio::test]
async fn a_deleted_session_stays_refused_after_the_listener_reconnects() {
    // An operator's DELETE (as DeleteAccount's cascade or housekeeping): the notification is
    // heard, and the reload after a reconnect must not bring the session back.
    let app = TestApp::spawn().await;
    wait_until_live(&app).await;
    let (user, t) = app.sign_up("deleted@example.com").await;
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &t.access_token)).await.unwrap();
    sqlx::query("DELETE FROM sessions WHERE user_id = $1::uuid").bind(&user.id).execute(&app.db.pool).await.unwrap();
    refused_within_a_second(&app, &t.access_token).await;
    // A fresh instance knows only what it loads: the deletion must be there to load.
    let fresh = testkit::spawn_task(testkit::task_config(&app.db)).await;
    let mut tasks =
        todo_proto::task::v1::task_service_client::TaskServiceClient::new(testkit::channel(fresh.addr).await);
    let started = std::time::Instant::now();
    loop {
        // Until the fresh instance's listener is live its checks go to the database (which
        // refuses too); the answer that matters is the one from its loaded list.
        let err = tasks
            .list_tasks(authed(ListTasksRequest::default(), &t.access_token))
            .await
            .expect_err("a deleted session's token is refused by an instance that started after the deletion");
        assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
        // The listener is live (LISTEN, then a heartbeat heard) well within 4 s.
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fresh.stop().await.unwrap();
}

#[tokio::test]
async fn keys_rotate_without_restarting_task_service() {
    let app = TestApp::spawn().await;
    wait_until_live(&app).await;
    let user = user_with_test_key(&app, "g@example.com", "old-key").await;
    let old_token = user.token();
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &old_token)).await.unwrap();

    // A new key is introduced and signs; both verify.
    let new = TestKey::new("new-key");
    new.register(&app.db.pool).await;
    let new_token = new.sign_claims(&user.claims());
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &new_token)).await.unwrap();
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &old_token)).await.unwrap();

    // The old key is retired: within a second it stops verifying (even a cached token), and
    // GetJwks shows exactly the keys that still verify.
    sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE kid = 'old-key'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let list = || {
        let mut tasks = app.tasks.clone();
        let request = authed(ListTasksRequest::default(), &old_token);
        async move { tasks.list_tasks(request).await }
    };
    refused_within(Duration::from_secs(1), Code::Unauthenticated, "INVALID_TOKEN", list).await;
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &new_token)).await.unwrap();
    let kids: Vec<String> = app
        .auth
        .clone()
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert!(kids.contains(&"new-key".to_string()) && !kids.contains(&"old-key".to_string()), "{kids:?}");
}

/// Writes a fresh Ed25519 key as a PKCS#8 PEM file only its owner can read.
fn key_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use std::os::unix::fs::PermissionsExt;
    let key = TestKey::new(name);
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, key.signing.to_pkcs8_pem(Default::default()).unwrap().as_bytes()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test]
async fn a_rolling_key_rotation_of_auth_service_needs_no_task_service_restart() {
    let app = TestApp::spawn().await;
    wait_until_live(&app).await;
    let dir = std::env::temp_dir().join(format!("todo-keys-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let instance = |key: std::path::PathBuf| {
        let mut config = testkit::auth_config(&app.db);
        config.signing_key_file = Some(key);
        testkit::spawn_auth(config)
    };
    let sign_up = |addr: std::net::SocketAddr, email: &'static str| async move {
        let mut auth = auth_service_client::AuthServiceClient::new(testkit::channel(addr).await);
        auth.sign_up(SignUpRequest { email: email.into(), password: PASSWORD.into() })
            .await
            .unwrap()
            .into_inner()
            .tokens
            .unwrap()
    };

    // The old key signs; then an instance with the new key joins, and the old one leaves.
    let old = instance(key_file(&dir, "old")).await;
    let old_token = sign_up(old.addr, "old@example.com").await.access_token;
    let old_kid = jsonwebtoken::decode_header(&old_token).unwrap().kid.unwrap();
    let new = instance(key_file(&dir, "new")).await;
    let new_token = sign_up(new.addr, "new@example.com").await.access_token;
    old.stop().await.unwrap();
    for token in [&old_token, &new_token] {
        app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), token)).await.unwrap();
    }
    let mut auth = auth_service_client::AuthServiceClient::new(testkit::channel(new.addr).await);
    assert_eq!(
        auth.get_jwks(GetJwksRequest {}).await.unwrap().into_inner().keys.len(),
        3,
        "the app's own key, old, new"
    );

    // Retiring the old key (auth-service retire-key) takes effect within a second at
    // task-service, which was never restarted; GetJwks no longer lists it.
    assert!(auth_service::signing_key::retire(&app.db.pool.clone().into(), &old_kid, Duration::ZERO).await.unwrap());
    let list = || {
        let mut tasks = app.tasks.clone();
        let request = authed(ListTasksRequest::default(), &old_token);
        async move { tasks.list_tasks(request).await }
    };
    refused_within(Duration::from_secs(1), Code::Unauthenticated, "INVALID_TOKEN", list).await;
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &new_token)).await.unwrap();
    let kids: Vec<String> =
        auth.get_jwks(GetJwksRequest {}).await.unwrap().into_inner().keys.into_iter().map(|k| k.kid).collect();
    assert_eq!(kids.len(), 2);
    assert!(!kids.contains(&old_kid));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn with_the_listener_live_no_call_reads_the_sessions_table() {
    // The README's "no database round trip per call": while another transaction holds an
    // exclusive lock on sessions, any call that looked its session up would wait for it.
    let app = TestApp::spawn().await;
    wait_until_live(&app).await;
    let (_, t) = app.sign_up("nolookup@example.com").await;
    let list = |deadline: Duration| {
        let mut request = authed(ListTasksRequest::default(), &t.access_token);
        request.set_timeout(deadline);
        let mut tasks = app.tasks.clone();
        async move { tasks.list_tasks(request).await }
    };
    list(Duration::from_secs(5)).await.unwrap();
    // The list becomes live just after LISTEN (it loads first): up to three tries, each starting
    // with the lock taken, so a start-up still under way is not taken for a lookup per call.
    let mut outcome = Err(String::new());
    for _ in 0..3 {
        let mut lock = app.db.pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
        outcome = Ok(());
        for n in 0..20 {
            if let Err(status) = list(Duration::from_millis(1000)).await {
                outcome = Err(format!("call {n} with sessions locked: {status:?}"));
                break;
            }
        }
        lock.rollback().await.unwrap();
        if outcome.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    outcome.expect("calls go on while sessions is locked: no call looks up its session");
}

#[tokio::test]
async fn a_verified_token_is_accepted_from_the_cache_only_until_it_expires() {
    let app = TestApp::spawn().await;
    wait_until_live(&app).await;
    let user = user_with_test_key(&app, "brief@example.com", "brief-key").await;
    // Expired a second ago: still inside the verifier's 5 s leeway, so accepted, and cached, now;
    // some four seconds on it is past even the leeway.
    let mut claims = user.claims();
    claims["exp"] = serde_json::json!(chrono::Utc::now().timestamp() - 1);
    let token = user.key.sign_claims(&claims);
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &token)).await.expect("inside the leeway");
    let request = WatchTasksRequest { sync_token: String::new() };
    let mut stream =
        app.tasks.clone().watch_tasks(authed(request, &token)).await.expect("inside the leeway").into_inner();

    let list = || {
        let mut tasks = app.tasks.clone();
        let request = authed(ListTasksRequest::default(), &token);
        async move { tasks.list_tasks(request).await }
    };
    refused_within(Duration::from_secs(7), Code::Unauthenticated, "TOKEN_EXPIRED", list).await;
    // The stream re-checks its token every second, so it ends too, with the same reason.
    let ended = crate::watch::end_of(&mut stream, Duration::from_secs(3), "an expired token's stream", |_| {}).await;
    assert_error(&ended, Code::Unauthenticated, "TOKEN_EXPIRED");
}

#[tokio::test]
async fn a_key_retired_for_later_verifies_until_then_and_stops_within_a_second_after() {
    // `auth-service retire-key <kid> 900`: the key's tokens keep working until the time given.
    let app = TestApp::spawn().await;
    wait_until_live(&app).await;
    let user = user_with_test_key(&app, "later@example.com", "leaving-key").await;
    let cached = user.token();
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &cached)).await.unwrap();
    let jwks = || async {
        let keys = app.auth.clone().get_jwks(GetJwksRequest {}).await.unwrap().into_inner().keys;
        keys.into_iter().map(|k| k.kid).collect::<Vec<_>>()
    };

    let until = Instant::now() + Duration::from_secs(5);
    assert!(
        auth_service::signing_key::retire(&app.db.pool.clone().into(), "leaving-key", Duration::from_secs(5))
            .await
            .unwrap()
    );
    // Until then: the cached token, and tokens never seen before, verify; GetJwks lists the key.
    // (Checked until 3 s before the time: a round of checks on a loaded machine may take long.)
    while Instant::now() + Duration::from_secs(3) < until {
        let fresh = user.token();
        for token in [&cached, &fresh] {
            let listed = app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), token)).await;
            listed.expect("a key retired for later still verifies before its time");
        }
        assert!(jwks().await.contains(&"leaving-key".to_string()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep_until(until.into()).await;
    let list = || {
        let mut tasks = app.tasks.clone();
        let request = authed(ListTasksRequest::default(), &cached);
        async move { tasks.list_tasks(request).await }
    };
    refused_within(Duration::from_secs(1), Code::Unauthenticated, "INVALID_TOKEN", list).await;
    assert!(!jwks().await.contains(&"leaving-key".to_string()), "GetJwks lists exactly the keys that verify");
}

#[tokio::test]
async fn a_revocation_counts_only_once_committed() {
    // The trigger's NOTIFY is delivered at commit: a revocation still open, or rolled back, does
    // not end the session; committed, it does within a second.
    let app = TestApp::spawn().await;
    wait_until_live(&app).await;
    let (user, t) = app.sign_up("undecided@example.com").await;
    let list = || {
        let mut tasks = app.tasks.clone();
        let request = authed(ListTasksRequest::default(), &t.access_token);
        async move { tasks.list_tasks(request).await }
    };
    let revoke = "UPDATE sessions SET revoked_at = now(), revoked_reason = 'logout' WHERE user_id = $1::uuid";
    let mut open = app.db.pool.begin().await.unwrap();
    sqlx::query(revoke).bind(&user.id).execute(&mut *open).await.unwrap();
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        list().await.expect("a revocation not yet committed does not count");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    open.rollback().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    list().await.expect("a rolled-back revocation never counts");
    sqlx::query(revoke).bind(&user.id).execute(&app.db.pool).await.unwrap();
    refused_within(Duration::from_secs(1), Code::Unauthenticated, "SESSION_REVOKED", list).await;
}
