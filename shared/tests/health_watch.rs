//! The health service over a real socket: Watch on a name the server does not know streams
//! SERVICE_UNKNOWN and stays open, then the name's status once it is registered (the gRPC health
//! checking protocol); Check on it is NOT_FOUND until then.

use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn watching_a_name_before_it_is_registered_sees_service_unknown_then_its_status() {
    let reporter = tonic_health::server::HealthReporter::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(todo_shared::server::health_service::service(&reporter))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    let server = tokio::spawn(server);
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let request = || HealthCheckRequest { service: "todo.later.v1.Later".into() };

    let err = health.check(request()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "Check on an unknown name");
    let mut watch = health.watch(request()).await.expect("Watch on an unknown name is not refused").into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), WireStatus::ServiceUnknown);
    let quiet = tokio::time::timeout(Duration::from_millis(1200), watch.message()).await;
    assert!(quiet.is_err(), "nothing more while the name is unknown, and the stream stays open: {quiet:?}");

    reporter.set_service_status("todo.later.v1.Later", ServingStatus::Serving).await;
    let next = tokio::time::timeout(Duration::from_secs(3), watch.message()).await.expect("the status within 3 s");
    assert_eq!(next.unwrap().unwrap().status(), WireStatus::Serving);
    reporter.set_service_status("todo.later.v1.Later", ServingStatus::NotServing).await;
    let next = tokio::time::timeout(Duration::from_secs(3), watch.message()).await.expect("the change within 3 s");
    assert_eq!(next.unwrap().unwrap().status(), WireStatus::NotServing);
    server.abort();
}
