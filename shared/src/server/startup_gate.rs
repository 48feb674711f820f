//! The start-up gate: a service listens at once and reports NOT_SERVING while its database
//! start-up steps run (`database::waiting`); its own calls wait for a start under way, are
//! refused with UNAVAILABLE while the database cannot be reached, and pass once it is done.
//! Each of its own calls is recorded as activity (`database::activity`); health and reflection
//! calls are not, so probes alone leave an idle service idle.

use futures_util::future::Either;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// The database start-up steps of a service; the server refuses its calls until they succeed.
pub type Startup = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// How long a call that arrives during start-up waits for it while the first attempt is under
/// way (a start on a database that answers takes moments; a busy machine may take seconds).
const CALL_WAITS_FOR_START: Duration = Duration::from_secs(10);

const STARTING: u8 = 0;
const UNREACHABLE: u8 = 1;
const READY: u8 = 2;

/// Where a server's start-up stands: its first attempt is under way, the database could not be
/// reached (calls are refused at once), or it is done.
#[derive(Clone)]
pub struct Ready {
    state: Arc<AtomicU8>,
    /// Set by the health probe after start-up while the database does not answer.
    database_down: Arc<AtomicBool>,
    changed: Arc<tokio::sync::watch::Sender<u8>>,
}

impl Default for Ready {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            database_down: Arc::default(),
            changed: Arc::new(tokio::sync::watch::channel(STARTING).0),
        }
    }
}

impl Ready {
    fn store(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.changed.send_replace(state);
    }

    /// Start-up is done: calls pass.
    pub fn set(&self) {
        self.store(READY);
    }

    /// True once start-up is done.
    pub fn get(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    /// Set by the health probe: while `down`, calls are refused with UNAVAILABLE at once.
    pub fn set_database_down(&self, down: bool) {
        self.database_down.store(down, Ordering::Release);
    }

    /// Started, and the database answered the last probe.
    fn serving(&self) -> bool {
        self.get() && !self.database_down.load(Ordering::Acquire)
    }

    /// Runs `startup` so that `until_database_ready` inside it can report an unreachable database.
    pub async fn scope<T>(&self, startup: impl Future<Output = T>) -> T {
        let this = self.clone();
        let on_unreachable: crate::database::waiting::OnUnreachable = Arc::new(move || {
            if !this.get() {
                this.store(UNREACHABLE);
            }
        });
        crate::database::waiting::reporting_unreachable(on_unreachable, startup).await
    }

    /// True once ready; false as soon as the database is known to be unreachable, or after `limit`.
    pub async fn wait(&self, limit: Duration) -> bool {
        let mut changed = self.changed.subscribe();
        matches!(tokio::time::timeout(limit, changed.wait_for(|state| *state != STARTING)).await, Ok(Ok(s)) if *s == READY)
    }
}

/// Holds the service's own calls while the first start-up attempt is under way, refuses them
/// with UNAVAILABLE while the database cannot be reached, and passes them once start-up is done;
/// health and reflection always pass.
#[derive(Clone)]
pub struct StartupGateLayer {
    /// The start-up state the gate follows.
    pub ready: Ready,
    /// The ErrorInfo domain of the refusal.
    pub domain: &'static str,
    /// Where the service's own calls are recorded (`Db::activity`).
    pub activity: crate::database::activity::Activity,
}

impl<S> tower::Layer<S> for StartupGateLayer {
    type Service = StartupGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StartupGate { inner, ready: self.ready.clone(), domain: self.domain, activity: self.activity.clone() }
    }
}

/// The service `StartupGateLayer` wraps.
#[derive(Clone)]
pub struct StartupGate<S> {
    inner: S,
    ready: Ready,
    domain: &'static str,
    activity: crate::database::activity::Activity,
}

type Held<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for StartupGate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    // Boxed only during start-up: once ready, a call costs nothing more than the flag check.
    type Future = Either<S::Future, Held<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
            return Either::Left(self.inner.call(request));
        }
        self.activity.touch();
        if self.ready.serving() {
            return Either::Left(self.inner.call(request));
        }
        let (ready, domain) = (self.ready.clone(), self.domain);
        if ready.get() {
            // Started, but the probe finds the database away: no call could succeed.
            return Either::Right(Box::pin(async move {
                Ok(unavailable(domain, "the database is unavailable; retry later"))
            }));
        }
        // The clone that was made ready serves this call; the fresh one stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            if ready.wait(CALL_WAITS_FOR_START).await {
                return inner.call(request).await;
            }
            Ok(unavailable(domain, "the service is starting and the database is not reachable yet; retry later"))
        }))
    }
}

fn unavailable<R: Default>(domain: &str, message: &str) -> http::Response<R> {
    crate::server::status::with_reason(tonic::Code::Unavailable, domain, "DATABASE_UNAVAILABLE", message).into_http()
}
