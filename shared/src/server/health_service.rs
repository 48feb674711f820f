//! The `grpc.health.v1.Health` service: tonic-health's, except for Watch on a name the server does
//! not know. tonic-health fails that call with NOT_FOUND; the gRPC health checking protocol
//! (doc/health-checking.md) says Watch must send SERVICE_UNKNOWN and keep the stream open, then
//! send the real status if the service is registered later, so that a client watching a service
//! that is still being deployed sees it appear. Check on an unknown name stays NOT_FOUND, as the
//! protocol says.

use futures_util::stream::{self, BoxStream, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

/// How often a Watch on an unknown name looks whether it has been registered since.
const UNKNOWN_RECHECK: Duration = Duration::from_secs(1);

/// tonic-health's service with the protocol's Watch for unknown names.
pub struct HealthWithUnknown {
    inner: Arc<HealthService>,
}

/// The health service answering from `reporter`'s statuses.
pub fn service(reporter: &HealthReporter) -> HealthServer<HealthWithUnknown> {
    HealthServer::new(HealthWithUnknown { inner: Arc::new(HealthService::from_health_reporter(reporter.clone())) })
}

fn check_request(service: &str) -> Request<HealthCheckRequest> {
    Request::new(HealthCheckRequest { service: service.to_owned() })
}

#[tonic::async_trait]
impl Health for HealthWithUnknown {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = BoxStream<'static, Result<HealthCheckResponse, Status>>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let name = request.get_ref().service.clone();
        match self.inner.watch(check_request(&name)).await {
            Ok(known) => Ok(Response::new(known.into_inner().boxed())),
            Err(status) if status.code() == Code::NotFound => {
                let unknown = HealthCheckResponse { status: WireStatus::ServiceUnknown as i32 };
                let inner = self.inner.clone();
                // SERVICE_UNKNOWN once, then nothing until the name is registered; from then on,
                // its statuses as for any known name.
                let registered = stream::once(async move {
                    loop {
                        tokio::time::sleep(UNKNOWN_RECHECK).await;
                        if let Ok(watch) = inner.watch(check_request(&name)).await {
                            return watch.into_inner();
                        }
                    }
                })
                .flatten();
                Ok(Response::new(stream::once(async move { Ok(unknown) }).chain(registered).boxed()))
            }
            Err(status) => Err(status),
        }
    }
}
