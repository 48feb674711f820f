//! bcrypt hashing and verification, off the async runtime and bounded.
//!
//! Each call runs on tokio's blocking pool, at most one per core at a time. The queue in front is
//! bounded: past a few calls per core waiting, or after a short wait, a call is refused
//! (RESOURCE_EXHAUSTED) at once instead of piling up, so a login storm cannot slow down the
//! cheap calls that share the runtime.
//! Unknown users are checked against a dummy hash, so login takes the same time either way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

/// How long a call may wait for a free hashing slot before it is refused.
const QUEUE_WAIT: Duration = Duration::from_secs(1);
/// How many calls per slot may wait at all.
const WAITING_PER_SLOT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("too many password checks in progress")]
    Overloaded,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    slots: Arc<Semaphore>,
    total_slots: usize,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    /// Computed in the background at start, so that startup does not wait for a bcrypt hash.
    dummy_hash: Arc<tokio::sync::OnceCell<Arc<str>>>,
}

impl PasswordHasher {
    pub async fn new(cost: u32) -> Result<Self, PasswordError> {
        let slots = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let dummy_hash = Arc::new(tokio::sync::OnceCell::new());
        let hasher = Self {
            cost,
            slots: Arc::new(Semaphore::new(slots)),
            total_slots: slots,
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: slots * WAITING_PER_SLOT,
            dummy_hash,
        };
        let warm = hasher.clone();
        tokio::spawn(async move {
            if let Err(e) = warm.dummy_hash().await {
                tracing::warn!(error = %e, "could not prepare the dummy hash yet");
            }
        });
        Ok(hasher)
    }

    /// A hash of nothing anyone knows, at the configured cost.
    async fn dummy_hash(&self) -> Result<Arc<str>, PasswordError> {
        let cost = self.cost;
        self.dummy_hash
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || bcrypt::hash("dummy password for unknown users", cost))
                    .await
                    .map_err(|e| PasswordError::Failed(e.to_string()))?
                    .map(Arc::from)
                    .map_err(|e| PasswordError::Failed(e.to_string()))
            })
            .await
            .cloned()
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Calls waiting for a hashing slot now (for the metrics).
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Acquire).min(self.max_waiting)
    }

    /// Hashes running now (for the metrics).
    pub fn in_progress(&self) -> usize {
        self.total_slots - self.slots.available_permits()
    }

    /// The most calls that may wait; one more is refused as OVERLOADED.
    pub fn max_queue_depth(&self) -> usize {
        self.max_waiting
    }

    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let password = password.to_owned();
        let cost = self.cost;
        self.run(move || bcrypt::hash(password, cost).map_err(|e| PasswordError::Failed(e.to_string()))).await
    }

    /// Whether `password` matches `hash`; with no hash (unknown user), a dummy check that
    /// takes as long and always fails.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, PasswordError> {
        // bcrypt would compare only the first 72 bytes; a longer attempt can never be right, and
        // is checked against the dummy hash so that it takes as long as any other.
        let hash = if password.len() > crate::domain::Password::MAX_BYTES { None } else { hash };
        let password = password.to_owned();
        let (hash, real) = match hash {
            Some(h) => (h.to_owned(), true),
            None => (self.dummy_hash().await?.to_string(), false),
        };
        let matched = self.run(move || Ok(bcrypt::verify(password, &hash).unwrap_or(false))).await?;
        Ok(real && matched)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // The guard gives the place back however the wait ends, a cancelled call included.
                let place = WaitingPlace::take(&self.waiting, self.max_waiting).ok_or(PasswordError::Overloaded)?;
                let waited = tokio::time::timeout(QUEUE_WAIT, self.slots.clone().acquire_owned()).await;
                drop(place);
                waited.map_err(|_| PasswordError::Overloaded)?.expect("the semaphore is never closed")
            }
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| PasswordError::Failed(e.to_string()))?
    }
}

/// One place in the queue of calls waiting for a hashing slot, given back on drop.
struct WaitingPlace<'a>(&'a AtomicUsize);

impl<'a> WaitingPlace<'a> {
    fn take(waiting: &'a AtomicUsize, max: usize) -> Option<Self> {
        let place = WaitingPlace(waiting);
        (waiting.fetch_add(1, Ordering::AcqRel) < max).then_some(place)
    }
}

impl Drop for WaitingPlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
