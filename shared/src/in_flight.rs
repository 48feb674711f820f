//! Counting the calls a server is answering, so that a graceful stop can end as soon as the last
//! one is answered instead of waiting for clients to close idle connections.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    changed: Arc<tokio::sync::Notify>,
}

impl InFlight {
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no call is being answered (checked at least every 50 ms).
    pub async fn idle(&self) {
        while self.current() > 0 {
            let _ = tokio::time::timeout(Duration::from_millis(50), self.changed.notified()).await;
        }
    }

    fn enter(&self) -> Guard {
        self.count.fetch_add(1, Ordering::AcqRel);
        Guard(self.clone())
    }
}

struct Guard(InFlight);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

/// The layer that counts: a call is in flight from its request until its response is ready
/// (for a stream, until it starts; streams are cut when the drain ends).
#[derive(Clone)]
pub struct CountInFlightLayer(pub InFlight);

impl<S> tower::Layer<S> for CountInFlightLayer {
    type Service = CountInFlight<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountInFlight { inner, tracker: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct CountInFlight<S> {
    inner: S,
    tracker: InFlight,
}

impl<S, R> tower::Service<R> for CountInFlight<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let guard = self.tracker.enter();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(guard);
            response
        })
    }
}
