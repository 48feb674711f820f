//! Per-call limits that need the request: the client's deadline (`grpc-timeout`) becomes the
//! deadline of the call's database work (`database::deadline`: a statement still running when the
//! call ends has its connection closed, and PostgreSQL cancels it rather than run on after the
//! client gave up), and when it passes before the answer is ready the call is answered
//! DEADLINE_EXCEEDED here (tonic's own timer, which would answer CANCELLED "Timeout expired", is
//! set just after this one and polls this answer first); and an oversized request, which tonic
//! reports as OUT_OF_RANGE, is answered with RESOURCE_EXHAUSTED as the gRPC spec asks.

use futures_util::FutureExt;
use futures_util::future::Map;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Sleep;

/// The largest request message a service accepts (`max_decoding_message_size`): the biggest
/// legitimate one (a task with a 255-character title and a 1000-character description) is a
/// few kilobytes; anything larger is refused with RESOURCE_EXHAUSTED before it is buffered.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Calls one HTTP/2 connection may have open at once (more wait for a slot); one client cannot
/// take the whole server.
pub const MAX_CONCURRENT_STREAMS_PER_CONNECTION: u32 = 100;

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(value: &http::HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Attaches each call's `grpc-timeout` as its database deadline, and answers an oversized
/// request with RESOURCE_EXHAUSTED.
#[derive(Clone, Copy, Default)]
pub struct CallLimitsLayer;

impl<S> tower::Layer<S> for CallLimitsLayer {
    type Service = CallLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimits { inner }
    }
}

/// The service `CallLimitsLayer` wraps.
#[derive(Clone)]
pub struct CallLimits<S> {
    inner: S,
}

type Rewrite<R, E> = fn(Result<http::Response<R>, E>) -> Result<http::Response<R>, E>;

impl<S, B, R> tower::Service<http::Request<B>> for CallLimits<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    // No box: a deadline around a task-local scope around a mapped future.
    type Future = Deadline<TaskLocalFuture<Option<Instant>, Map<S::Future, Rewrite<R, S::Error>>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(parse_grpc_timeout)
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let rewrite: Rewrite<R, S::Error> = oversized_is_resource_exhausted;
        Deadline {
            // Made here, in `call`, so that it is due no later than tonic's (made after this
            // returns): when both fire in one timer tick, tonic polls this answer first.
            sleep: deadline.map(|at| tokio::time::sleep_until(at.into())),
            inner: crate::database::deadline::scope(deadline, self.inner.call(request).map(rewrite)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's answer, or DEADLINE_EXCEEDED once its `grpc-timeout` has passed (for a stream:
    /// before its response headers; afterwards the client's own deadline ends it).
    pub struct Deadline<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<F, R: Default, E> Future for Deadline<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let ready @ Poll::Ready(_) = this.inner.poll(cx) {
            return ready;
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Ok(tonic::Status::deadline_exceeded(
                "the call's deadline (grpc-timeout) passed before it was answered",
            )
            .into_http())),
            _ => Poll::Pending,
        }
    }
}

/// tonic answers a request above the size limit with OUT_OF_RANGE "decoded message length too
/// large"; the gRPC spec (and other servers) say RESOURCE_EXHAUSTED.
fn oversized_is_resource_exhausted<R: Default, E>(
    response: Result<http::Response<R>, E>,
) -> Result<http::Response<R>, E> {
    let response = response?;
    let headers = response.headers();
    let out_of_range = headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    let too_large = out_of_range
        && headers.get("grpc-message").is_some_and(|m| {
            // Percent-encoded on the wire.
            let m = m.as_bytes();
            m.windows(11).any(|w| w == b"too%20large") || m.windows(9).any(|w| w == b"too large")
        });
    if !too_large {
        return Ok(response);
    }
    Ok(tonic::Status::resource_exhausted(format!(
        "the request is larger than the {} bytes this server accepts",
        MAX_REQUEST_BYTES
    ))
    .into_http())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        let parse = |s: &str| parse_grpc_timeout(&http::HeaderValue::from_str(s).unwrap());
        assert_eq!(parse("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789S"), None);
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("S"), None);
    }
}
