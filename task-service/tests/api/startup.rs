use testkit::{assert_error, authed};
use todo_proto::auth::v1::SignUpRequest;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, ListTasksRequest};
use tonic::Code;

#[tokio::test]
async fn task_service_starts_alone_and_accepts_keys_registered_after_it_started() {
    let db = testkit::test_database::TestDatabase::new().await;
    // task-service first, with no auth-service anywhere and no key in the database.
    let task_server = testkit::spawn_task(testkit::task_config(&db)).await;
    let mut tasks = TaskServiceClient::new(testkit::channel(task_server.addr).await);
    let err = tasks.list_tasks(ListTasksRequest::default()).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "MISSING_TOKEN");

    // Two auth-service instances come up later, each with its own key.
    let mut tokens = Vec::new();
    let mut servers = Vec::new();
    for (i, email) in ["one@example.com", "two@example.com"].into_iter().enumerate() {
        let server = testkit::spawn_auth(testkit::auth_config(&db)).await;
        let mut auth = AuthServiceClient::new(testkit::channel(server.addr).await);
        let pair = auth
            .sign_up(SignUpRequest { email: email.into(), password: testkit::PASSWORD.into() })
            .await
            .unwrap()
            .into_inner()
            .tokens
            .unwrap();
        tokens.push(pair.access_token);
        servers.push(server);
        let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM signing_keys").fetch_one(&db.pool).await.unwrap();
        assert_eq!(keys, i as i64 + 1);
    }
    // Both instances' tokens work at once, and keep working with auth-service gone.
    for server in servers {
        server.stop().await.unwrap();
    }
    for token in &tokens {
        tasks
            .create_task(authed(CreateTaskRequest { title: "hello".into(), ..Default::default() }, token))
            .await
            .unwrap();
        let listed = tasks.list_tasks(authed(ListTasksRequest::default(), token)).await.unwrap().into_inner();
        assert_eq!(listed.tasks.len(), 1);
    }
}
