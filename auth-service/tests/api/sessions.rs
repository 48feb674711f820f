//! Sessions a user can see and end: ListSessions (where and when each was opened and last used,
//! which is the caller's), RevokeSession (one's own only: another user's is NOT_FOUND) and
//! RevokeOtherSessions; a revoked session's tokens are refused by task-service within a second.

use std::time::Duration;
use testkit::{TestApp, assert_error, authed, bad_fields};
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::*;
use todo_proto::task::v1::ListTasksRequest;
use tonic::Code;
use tonic::transport::Channel;

/// A client of `app`'s auth-service from `source` (a loopback address) saying `user_agent`.
async fn device(app: &TestApp, source: &str, user_agent: &str) -> AuthServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", app.auth_server.addr))
        .unwrap()
        .local_address(Some(source.parse().unwrap()))
        .user_agent(user_agent)
        .unwrap()
        .connect()
        .await
        .unwrap();
    AuthServiceClient::new(channel)
}

async fn login(client: &mut AuthServiceClient<Channel>, email: &str) -> TokenPair {
    let request = LoginRequest { email: email.into(), password: testkit::PASSWORD.into() };
    client.login(request).await.unwrap().into_inner().tokens.unwrap()
}

async fn sessions(client: &mut AuthServiceClient<Channel>, access_token: &str) -> Vec<Session> {
    client.list_sessions(authed(ListSessionsRequest {}, access_token)).await.unwrap().into_inner().sessions
}

#[tokio::test]
async fn a_user_sees_their_sessions_and_ends_one_or_all_others_but_never_someone_elses() {
    let app = TestApp::spawn().await;
    app.sign_up("alice@example.com").await;
    let (_, bobs) = app.sign_up("bob@example.com").await;
    let (mut phone, mut laptop) =
        (device(&app, "127.0.0.2", "phone-app/1.0").await, device(&app, "127.0.0.3", "laptop-app/2.0").await);
    let on_phone = login(&mut phone, "alice@example.com").await;
    tokio::time::sleep(Duration::from_millis(20)).await; // distinct opening times
    let on_laptop = login(&mut laptop, "alice@example.com").await;

    // Newest first, with where and when; the caller's own is marked. The sign-up's session is
    // there too (oldest).
    let list = sessions(&mut phone, &on_phone.access_token).await;
    assert_eq!(list.len(), 3, "{list:?}");
    let (laptop_session, phone_session) = (&list[0], &list[1]);
    assert!(laptop_session.create_user_agent.starts_with("laptop-app/2.0"), "{laptop_session:?}");
    assert_eq!(laptop_session.create_client_address, "127.0.0.3");
    assert!(phone_session.create_user_agent.starts_with("phone-app/1.0"), "{phone_session:?}");
    assert_eq!(phone_session.create_client_address, "127.0.0.2");
    assert_eq!(
        list.iter().filter(|s| s.current).map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [phone_session.id.as_str()]
    );
    let (created, expires) = (phone_session.create_time.unwrap(), phone_session.expire_time.unwrap());
    assert_eq!(
        expires.seconds - phone_session.last_use_time.unwrap().seconds,
        7 * 86_400,
        "idle timeout from the last use"
    );
    assert!(created.seconds > 0);

    // A refresh from another place shows as the session's last use.
    let mut elsewhere = device(&app, "127.0.0.4", "laptop-app/2.1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = elsewhere
        .refresh_token(RefreshTokenRequest { refresh_token: on_laptop.refresh_token.clone() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let list = sessions(&mut phone, &on_phone.access_token).await;
    let laptop_now = list.iter().find(|s| s.id == laptop_session.id).unwrap();
    assert_eq!(laptop_now.last_client_address, "127.0.0.4");
    assert!(laptop_now.last_user_agent.starts_with("laptop-app/2.1"), "{laptop_now:?}");
    assert_eq!(laptop_now.create_client_address, "127.0.0.3", "where it was opened stays");
    assert!(laptop_now.last_use_time.unwrap().seconds > laptop_session.last_use_time.unwrap().seconds);

    // Another user cannot end it, nor learn that it exists; a malformed id names the field.
    let err = app
        .auth
        .clone()
        .revoke_session(authed(RevokeSessionRequest { session_id: laptop_session.id.clone() }, &bobs.access_token))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "SESSION_NOT_FOUND");
    let unknown = uuid::Uuid::new_v4().to_string();
    let err = phone
        .revoke_session(authed(RevokeSessionRequest { session_id: unknown }, &on_phone.access_token))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "SESSION_NOT_FOUND");
    let err = phone
        .revoke_session(authed(RevokeSessionRequest { session_id: "laptop".into() }, &on_phone.access_token))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["session_id"]);
    app.tasks.clone().list_tasks(authed(ListTasksRequest::default(), &refreshed.access_token)).await.unwrap();

    // Alice ends the laptop's session from her phone: its tokens stop everywhere.
    phone
        .revoke_session(authed(RevokeSessionRequest { session_id: laptop_session.id.clone() }, &on_phone.access_token))
        .await
        .unwrap();
    crate::refused_by_task_service(&app, &refreshed.access_token).await;
    let err = laptop.refresh_token(RefreshTokenRequest { refresh_token: refreshed.refresh_token }).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "SESSION_REVOKED");
    let err = phone
        .revoke_session(authed(RevokeSessionRequest { session_id: laptop_session.id.clone() }, &on_phone.access_token))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "SESSION_NOT_FOUND");
    assert_eq!(sessions(&mut phone, &on_phone.access_token).await.len(), 2);

    // Every other session ends; the caller's goes on.
    let on_tablet = login(&mut laptop, "alice@example.com").await;
    let ended = phone
        .revoke_other_sessions(authed(RevokeOtherSessionsRequest {}, &on_phone.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.revoked_sessions, 2, "the sign-up's and the tablet's");
    crate::refused_by_task_service(&app, &on_tablet.access_token).await;
    let list = sessions(&mut phone, &on_phone.access_token).await;
    assert_eq!(
        list.iter().map(|s| (s.id.as_str(), s.current)).collect::<Vec<_>>(),
        [(phone_session.id.as_str(), true)]
    );
    // A session past its lifetime that no refresh has revoked yet is neither listed nor ended.
    let old = login(&mut laptop, "alice@example.com").await;
    let old_id: uuid::Uuid = sqlx::query_scalar(
        "UPDATE sessions SET created_at = now() - interval '31 days'
         WHERE id = (SELECT max(id::text)::uuid FROM sessions WHERE revoked_at IS NULL AND created_at > now() - interval '1 minute'
                     AND id <> $1::uuid AND user_id = (SELECT user_id FROM sessions WHERE id = $1::uuid))
         RETURNING id",
    )
    .bind(&phone_session.id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    drop(old);
    assert!(sessions(&mut phone, &on_phone.access_token).await.iter().all(|s| s.id != old_id.to_string()));
    let err = phone
        .revoke_session(authed(RevokeSessionRequest { session_id: old_id.to_string() }, &on_phone.access_token))
        .await
        .unwrap_err();
    assert_error(&err, Code::NotFound, "SESSION_NOT_FOUND");
    let ended = phone
        .revoke_other_sessions(authed(RevokeOtherSessionsRequest {}, &on_phone.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ended.revoked_sessions, 0, "an expired session is not counted as ended");

    let bobs_live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.email = 'bob@example.com' AND s.revoked_at IS NULL")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(bobs_live, 1, "another user's sessions are untouched");
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT revoked_reason FROM sessions WHERE revoked_at IS NOT NULL")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(reasons, ["revoked_by_user"]);
}
