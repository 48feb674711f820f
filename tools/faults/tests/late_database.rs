//! A database that is not up yet when the services start: they listen, report NOT_SERVING and
//! refuse calls with UNAVAILABLE, keep waiting (never exit), then migrate, register their key
//! and serve within moments of the database coming up.

use faults::{DedicatedPostgres, Services, health, lazy_channel, wait_for_health, with_deadline};
use std::time::{Duration, Instant};
use todo_proto::auth::v1::SignUpRequest;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::task::v1::CreateTaskRequest;
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_before_the_database_wait_for_it_and_then_serve() {
    let mut pg = DedicatedPostgres::start();
    pg.stop("fast");
    let services = Services::spawn(pg.db_config()).await;
    let mut auth = AuthServiceClient::new(lazy_channel(services.auth.addr));
    let mut tasks = TaskServiceClient::new(lazy_channel(services.task.addr));

    // Long enough for several attempts of the start-up steps, each of which fails.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for addr in [services.auth.addr, services.task.addr] {
        assert_eq!(health(addr).await, Some(ServingStatus::NotServing), "health of {addr} while the database is down");
    }
    let sign_up = SignUpRequest { email: "early@example.com".into(), password: testkit::PASSWORD.into() };
    let started = Instant::now();
    let err = auth.sign_up(with_deadline(sign_up.clone(), None, Duration::from_secs(5))).await.unwrap_err();
    testkit::assert_error(&err, Code::Unavailable, "DATABASE_UNAVAILABLE");
    // Once the database is known to be away, calls are refused at once.
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once, took {:?}", started.elapsed());
    let err = tasks
        .create_task(with_deadline(CreateTaskRequest::default(), Some("x"), Duration::from_secs(5)))
        .await
        .unwrap_err();
    testkit::assert_error(&err, Code::Unavailable, "DATABASE_UNAVAILABLE");

    pg.start_again();
    let back = Instant::now();
    for addr in [services.auth.addr, services.task.addr] {
        let took = wait_for_health(addr, ServingStatus::Serving, Duration::from_secs(10)).await;
        assert!(took.is_some(), "{addr} never became SERVING after the database came up");
    }
    let serving_after = back.elapsed();
    println!("both services SERVING {serving_after:?} after PostgreSQL accepted connections");
    assert!(serving_after < Duration::from_secs(4), "took {serving_after:?}");

    // Real calls: the migrations ran and the signing key is registered.
    let tokens = auth
        .sign_up(with_deadline(sign_up, None, Duration::from_secs(5)))
        .await
        .expect("sign-up once the database is up")
        .into_inner()
        .tokens
        .unwrap();
    let created = tasks
        .create_task(with_deadline(
            CreateTaskRequest { title: "after the wait".into(), ..Default::default() },
            Some(&tokens.access_token),
            Duration::from_secs(5),
        ))
        .await
        .expect("a task once the database is up");
    assert_eq!(created.into_inner().task.unwrap().title, "after the wait");
    services.auth.stop().await.expect("auth-service stops cleanly");
    services.task.stop().await.expect("task-service stops cleanly");
}
