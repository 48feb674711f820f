//! Starting while the database is not up yet: a service listens at once, reports NOT_SERVING and
//! refuses its own calls with UNAVAILABLE, and runs its database start-up steps (migrations, key
//! registration) again and again with capped exponential backoff until they succeed. It never
//! exits because the database is late; it does exit on an error that waiting cannot fix (a
//! retired signing key, a migration that does not apply).

use futures_util::future::Either;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// The first wait after a failed attempt; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts: a database that comes back is used within this long.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one "does the database answer?" attempt may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long start-up attempts must have failed before waiting calls are refused.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(1);

/// The database start-up steps of a service; the server refuses its calls until they succeed.
pub type Startup = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Runs `step` until it succeeds, waiting with capped exponential backoff while the database
/// cannot be reached. Before each attempt the database must answer a trivial query within
/// `PROBE_TIMEOUT`, so an attempt never hangs on a database that is away; the step itself is
/// not cut short (a long migration must not be interrupted). An error that does not mean
/// "unreachable" ends the wait and is returned.
pub async fn until_database_ready<T, F, Fut>(db: &crate::db::Db, what: &str, mut step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut backoff = FIRST_BACKOFF;
    let started = std::time::Instant::now();
    for attempt in 1u32.. {
        let error = match tokio::time::timeout(PROBE_TIMEOUT, sqlx::Executor::execute(db, "SELECT 1")).await {
            Err(_) => anyhow::anyhow!("the database did not answer within {PROBE_TIMEOUT:?}"),
            Ok(Err(e)) if crate::db::is_unavailable(&e) => anyhow::Error::new(e),
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context(format!("{what}: the database refused"))),
            Ok(Ok(_)) => match step().await {
                Ok(value) => {
                    if attempt > 1 {
                        tracing::info!(attempt, "{what}: done; the database is back");
                    }
                    return Ok(value);
                }
                Err(e) if is_unavailable(&e) => e,
                Err(e) => return Err(e),
            },
        };
        // Calls waiting for the start are refused only once attempts have failed for a moment:
        // one quick failure on a busy machine (or pooler) is retried within 100 ms.
        if started.elapsed() >= UNREACHABLE_AFTER {
            let _ = STATE.try_with(|state| {
                if !state.get() {
                    state.store(UNREACHABLE);
                }
            });
        }
        tracing::warn!(
            attempt,
            retry_in = ?backoff,
            error = %format!("{error:#}"),
            "{what}: the database is not reachable yet; health stays NOT_SERVING"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    unreachable!("the attempt counter does not run out")
}

/// True when `error` (anywhere in its chain) says the database could not be reached.
pub fn is_unavailable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
            return crate::db::is_unavailable(e);
        }
        match cause.downcast_ref::<sqlx::migrate::MigrateError>() {
            Some(sqlx::migrate::MigrateError::Execute(e) | sqlx::migrate::MigrateError::ExecuteMigration(e, _)) => {
                crate::db::is_unavailable(e)
            }
            _ => false,
        }
    })
}

/// How long a call that arrives during start-up waits for it while the first attempt is under
/// way (a start on a database that answers takes moments; a busy machine may take seconds).
const CALL_WAITS_FOR_START: Duration = Duration::from_secs(10);

const STARTING: u8 = 0;
const UNREACHABLE: u8 = 1;
const READY: u8 = 2;

tokio::task_local! {
    /// The start-up state of the server whose start-up steps run in this task.
    static STATE: Ready;
}

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

    pub fn set(&self) {
        self.store(READY);
    }

    pub fn get(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    pub fn set_database_down(&self, down: bool) {
        self.database_down.store(down, Ordering::Release);
    }

    /// Started, and the database answered the last probe.
    fn serving(&self) -> bool {
        self.get() && !self.database_down.load(Ordering::Acquire)
    }

    /// Runs `startup` so that `until_database_ready` inside it can report an unreachable database.
    pub async fn scope<T>(&self, startup: impl Future<Output = T>) -> T {
        STATE.scope(self.clone(), startup).await
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
    pub ready: Ready,
    /// The ErrorInfo domain of the refusal.
    pub domain: &'static str,
}

impl<S> tower::Layer<S> for StartupGateLayer {
    type Service = StartupGate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StartupGate { inner, ready: self.ready.clone(), domain: self.domain }
    }
}

#[derive(Clone)]
pub struct StartupGate<S> {
    inner: S,
    ready: Ready,
    domain: &'static str,
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
        if self.ready.serving() || path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
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
    crate::status::with_reason(tonic::Code::Unavailable, domain, "DATABASE_UNAVAILABLE", message).into_http()
}
