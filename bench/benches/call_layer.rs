//! Micro-benchmark: what the per-call layer (in flight, access log, metrics) costs a call, with
//! metrics off and on, around a service that answers at once.
//! `cargo bench -p bench --bench call_layer`

use criterion::{Criterion, criterion_group, criterion_main};
use std::future::Future;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use todo_shared::server::access_log::AccessLogLayer;
use todo_shared::server::in_flight::InFlight;
use todo_shared::server::metrics::Metrics;
use tower::{Layer, Service};

/// Answers every call at once with an empty OK response.
#[derive(Clone)]
struct Instant;

impl Service<http::Request<()>> for Instant {
    type Response = http::Response<()>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(())))
    }
}

fn call_once<S>(service: &mut S, path: &'static str)
where
    S: Service<http::Request<()>>,
{
    let request = http::Request::builder().uri(path).body(()).expect("a valid request");
    let mut future = std::pin::pin!(service.call(request));
    // The inner service is ready at once, so one poll finishes the call.
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(response) => drop(black_box(response)),
        Poll::Pending => unreachable!("the call completes in one poll"),
    }
}

fn call_layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let _guard = runtime.enter();
    let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://bench@127.0.0.1/none").expect("a URL");
    let services = ["todo.auth.v1.AuthService", "grpc.health.v1.Health"];
    let metrics = Metrics::new(&services, &todo_shared::database::Db::from(pool), Vec::new());
    let login = "/todo.auth.v1.AuthService/Login";

    let mut off = AccessLogLayer(InFlight::default(), None).layer(Instant);
    c.bench_function("call layer, metrics off", |b| b.iter(|| call_once(&mut off, login)));
    let mut on = AccessLogLayer(InFlight::default(), Some(metrics.grpc.clone())).layer(Instant);
    c.bench_function("call layer, metrics on", |b| b.iter(|| call_once(&mut on, login)));
    c.bench_function("call layer, metrics on, unknown path", |b| {
        b.iter(|| call_once(&mut on, "/no.such.Service/Method"))
    });
    c.bench_function("render /metrics", |b| b.iter(|| black_box(runtime.block_on(metrics.render()))));
}

criterion_group!(benches, call_layer);
criterion_main!(benches);
