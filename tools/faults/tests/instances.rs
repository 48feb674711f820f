//! Several instances on one database behave as one: two auth-service and two task-service
//! instances start at once on an empty database (each applying migrations), a session made on
//! one auth-service and revoked on the other is refused by both task-services within 1 s, and
//! login throttling counts the failures made on either instance.

use faults::{wait_for_health, with_deadline};
use std::time::{Duration, Instant};
use testkit::test_database::TestDatabase;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{LoginRequest, LogoutRequest, SignUpRequest};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, ListTasksRequest};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_each_on_one_database_behave_as_one() {
    let db = TestDatabase::empty().await;
    let migrating = || todo_shared::database::DbConfig { run_migrations: true, ..testkit::db_config(&db) };
    let (auth_a, auth_b, task_a, task_b) = tokio::join!(
        testkit::spawn_auth(testkit::auth_config_with(migrating())),
        testkit::spawn_auth(testkit::auth_config_with(migrating())),
        testkit::spawn_task(testkit::task_config_with(migrating())),
        testkit::spawn_task(testkit::task_config_with(migrating())),
    );
    for server in [&auth_a, &auth_b, &task_a, &task_b] {
        let serving = wait_for_health(server.addr, ServingStatus::Serving, Duration::from_secs(30)).await;
        assert!(serving.is_some(), "{} serving", server.addr);
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&db.pool).await.unwrap();
    let ups = todo_shared::database::MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration()).count();
    assert_eq!(applied as usize, ups, "each migration applied once");
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM signing_keys").fetch_one(&db.pool).await.unwrap();
    assert_eq!(keys, 2, "each auth-service registered its key");

    let mut auth = [
        AuthServiceClient::new(testkit::channel(auth_a.addr).await),
        AuthServiceClient::new(testkit::channel(auth_b.addr).await),
    ];
    let tasks = [
        TaskServiceClient::new(testkit::channel(task_a.addr).await),
        TaskServiceClient::new(testkit::channel(task_b.addr).await),
    ];

    // A session made on A works on both task-services; revoked on B, both refuse it within 1 s.
    let sign_up = SignUpRequest { email: "many@example.com".into(), password: testkit::PASSWORD.into() };
    let tokens = auth[0].sign_up(sign_up).await.unwrap().into_inner().tokens.unwrap();
    for mut client in tasks.clone() {
        let create = CreateTaskRequest { title: "seen by both".into(), ..Default::default() };
        client.create_task(testkit::authed(create, &tokens.access_token)).await.unwrap();
    }
    auth[1].logout(LogoutRequest { refresh_token: tokens.refresh_token.clone() }).await.unwrap();
    let revoked = Instant::now();
    for client in tasks.clone() {
        let list = || {
            let request =
                with_deadline(ListTasksRequest::default(), Some(&tokens.access_token), Duration::from_secs(2));
            let mut client = client.clone();
            async move { client.list_tasks(request).await }
        };
        // Both within 1 s of the logout: the second task-service's second counts from the same start.
        let left = Duration::from_secs(1).saturating_sub(revoked.elapsed());
        testkit::refused_within(left, Code::Unauthenticated, "SESSION_REVOKED", list).await;
    }
    println!("both task-services refused the session {:?} after the logout", revoked.elapsed());

    // Throttling: five failures spread over both instances lock the account on both.
    for attempt in 0..5 {
        let wrong = LoginRequest { email: "many@example.com".into(), password: "wrong password".into() };
        let err = auth[attempt % 2].login(wrong).await.unwrap_err();
        testkit::assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    for client in &mut auth {
        let right = LoginRequest { email: "many@example.com".into(), password: testkit::PASSWORD.into() };
        let err = client.login(right).await.unwrap_err();
        testkit::assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    }
}
