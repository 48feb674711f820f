//! The layer every call passes through: it counts the call as in flight (for graceful stops) and
//! writes one log line per call: gRPC method, status code, latency and a request id. A client may send
//! its own `x-request-id` (kept if it is short and printable); otherwise one is made. Either way
//! it comes back in the response metadata, so a caller can quote it when reporting a problem.
//! With LOG_FORMAT=json each line is one JSON object with these as fields.
//! With metrics on, the same place counts the call in the Prometheus series (`metrics`).
//!
//! The call runs inside a span `call` with `method` and `request_id` (and `user_id`, recorded
//! once the token is verified), so every line logged during the call, deep in a store function
//! too, can be tied to it. With traces on (`telemetry`) the same span is exported as the call's
//! server span, named and attributed as the OpenTelemetry RPC conventions say
//! (`todo.task.v1.TaskService/ListTasks`, `rpc.system`, `rpc.grpc.status_code`), a child of the
//! caller's span when the metadata holds a `traceparent`.
//!
//! Kept our own rather than tower-http's `SetRequestId`/`PropagateRequestId` and `TraceLayer`:
//! - tower-http keeps a client's `x-request-id` whatever it holds; we replace one unfit for a log
//!   line (over 128 bytes, or not visible ASCII), which would take a layer of our own anyway;
//! - the log line, the metrics and the in-flight count all need the call's start, its gRPC code
//!   (in the headers for an error, in the trailers for a stream) and its end. Here that is read
//!   once, in one boxed future per call; as three layers it would be three futures, and the code
//!   would be classified twice (`TraceLayer`'s classifier, then the metrics).

use crate::server::in_flight::InFlight;
use crate::server::metrics::{CountedBody, GrpcMetrics, StreamEnd, grpc_status};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument;

const REQUEST_ID: &str = "x-request-id";

/// One layer for every per-call job (in flight, log, metrics when on), so that a call costs one
/// boxed future, not several.
#[derive(Clone)]
pub struct AccessLogLayer(pub InFlight, pub Option<Arc<GrpcMetrics>>);

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner, in_flight: self.0.clone(), metrics: self.1.clone() }
    }
}

/// The service `AccessLogLayer` wraps around the server's routes.
#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    in_flight: InFlight,
    metrics: Option<Arc<GrpcMetrics>>,
}

/// The client's id if it is fit to log (at most 128 visible ASCII characters), else a new one.
fn request_id<B>(request: &http::Request<B>) -> http::HeaderValue {
    request
        .headers()
        .get(REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
        .cloned()
        .unwrap_or_else(|| {
            http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a UUID is a valid header value")
        })
}

/// The call's gRPC code on its span; the codes that mean the server failed make the span an
/// error (OpenTelemetry's RPC conventions for gRPC server spans).
fn record_code(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i64);
    use tonic::Code::*;
    if matches!(code, Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss) {
        span.record("otel.status_code", "ERROR");
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for AccessLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // In flight from the request until the response is ready (for a stream, until it starts;
        // streams are cut when the drain ends).
        let in_flight = self.in_flight.enter();
        let started = Instant::now();
        let id = request_id(&request);
        request.headers_mut().insert(REQUEST_ID, id.clone());
        let method = request.uri().path().to_owned();
        let series = self.metrics.as_ref().map(|metrics| metrics.started(&method));
        // At ERROR level, so it is enabled whenever any line is logged: a filter of `warn` must not
        // strip the call's id from the warnings written during it.
        let span = tracing::error_span!(
            "call",
            method = %method,
            request_id = %id.to_str().unwrap_or_default(),
            user_id = tracing::field::Empty,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            rpc.system = tracing::field::Empty,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let traced = crate::server::telemetry::traces_on();
        if traced {
            // Recorded only when exported: a log line shows the span's fields.
            span.record("otel.name", method.trim_start_matches('/'));
            span.record("otel.kind", "server");
            span.record("rpc.system", "grpc");
            crate::server::telemetry::continue_trace(&span, request.headers());
        }
        let future = span.in_scope(|| self.inner.call(request));
        let call_span = span.clone();
        Box::pin(
            async move {
                let response = future.await;
                drop(in_flight);
                let mut response = match response {
                    Ok(response) => response,
                    Err(e) => {
                        if let Some(series) = series {
                            series.handled(tonic::Code::Unknown, started.elapsed());
                        }
                        return Err(e);
                    }
                };
                // An error travels in the headers (trailers-only); a success's status follows the
                // body in trailers, so a response without one here is reported as OK.
                let code_in_headers = grpc_status(response.headers());
                let code = code_in_headers.unwrap_or(tonic::Code::Ok);
                if traced {
                    record_code(&call_span, code);
                }
                response.headers_mut().insert(REQUEST_ID, id.clone());
                // A unary call is over once its headers are ready; a stream that has started is
                // counted when its body ends, with the code of its trailers.
                let stream_end = match series {
                    Some(series) if series.is_stream() && code_in_headers.is_none() => {
                        Some(StreamEnd::new(series, started))
                    }
                    Some(series) => {
                        series.handled(code, started.elapsed());
                        None
                    }
                    None => None,
                };
                tracing::info!(
                    target: "grpc",
                    method = %method,
                    code = ?code,
                    latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                    request_id = id.to_str().unwrap_or_default(),
                    "call"
                );
                Ok(response.map(|body| CountedBody::new(body, stream_end)))
            }
            .instrument(span),
        )
    }
}
