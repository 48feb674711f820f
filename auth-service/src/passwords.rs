//! bcrypt hashing and verification, off the async runtime and bounded.
//!
//! Each call runs on tokio's blocking pool, at most one per core at a time. The queue in front is
//! bounded: past a few calls per core waiting, or after a short wait, a call is refused
//! (RESOURCE_EXHAUSTED) at once instead of piling up, so a login storm cannot slow down the
//! cheap calls that share the runtime.
//! The queue is fair between clients (an IPv4 address or an IPv6 /64): each client has at most
//! one call in the queue for a slot at a time, its others wait behind that one, so free slots go
//! round the waiting clients in turn; and one client may hold at most half of the waiting
//! places. One address sending many calls thus gets its turn like any other, and the others'
//! calls wait about one check, not behind the whole flood.
//! Unknown users are checked against a dummy hash, so login takes the same time either way.
//! Two answers take that time without hashing at all (`pace`): a throttled attempt, which
//! must not occupy a slot that real logins need, and the rest of a check against a stored hash of
//! a lower cost than the configured one, which would otherwise answer faster than an unknown
//! address does and tell the two apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long a call may wait for a free hashing slot before it is refused.
const QUEUE_WAIT: Duration = Duration::from_secs(1);
/// How many calls per slot may wait at all.
const WAITING_PER_SLOT: usize = 8;
/// The share of the waiting places one client may hold: one in this many. Half leaves a lone
/// client (a gateway doing every login) a queue of 4 per slot, about what fits in `QUEUE_WAIT`
/// at cost 12, and always leaves places for others.
const CLIENT_SHARE_OF_WAITING: usize = 2;

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
    /// Per client with calls waiting: how many, and its turn in the queue for a slot.
    clients: Arc<Mutex<HashMap<String, ClientQueue>>>,
    /// Computed in the background at start, so that startup does not wait for a bcrypt hash.
    dummy_hash: Arc<tokio::sync::OnceCell<Arc<str>>>,
    /// How long one bcrypt run at the configured cost takes here, in microseconds: first the
    /// dummy hash's, then a moving average of the checks made at that cost.
    check_micros: Arc<AtomicU64>,
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
            clients: Arc::default(),
            dummy_hash,
            check_micros: Arc::new(AtomicU64::new(0)),
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
        let check_micros = self.check_micros.clone();
        self.dummy_hash
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    let hash = bcrypt::hash("dummy password for unknown users", cost);
                    let _ = check_micros.compare_exchange(
                        0,
                        micros(started.elapsed()),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    hash
                })
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

    /// How long a check at the configured cost takes here (known once the dummy hash is made).
    fn check_time(&self) -> Duration {
        Duration::from_micros(self.check_micros.load(Ordering::Acquire))
    }

    /// Waits until `checks` checks at the configured cost, begun at `started`, would have ended,
    /// without taking a hashing slot: for answers that must take as long as password checks.
    pub async fn pace(&self, started: Instant, checks: u32) {
        if self.check_micros.load(Ordering::Acquire) == 0 {
            // Not measured yet (the first moments after start): measure it now.
            let _ = self.dummy_hash().await;
        }
        tokio::time::sleep_until((started + self.check_time() * checks).into()).await;
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

    /// A bcrypt hash of `password` at the configured cost, made in `client`'s turn (see the
    /// module comment; `client` is what the throttle counts by, "" when unknown).
    pub async fn hash(&self, password: &str, client: &str) -> Result<String, PasswordError> {
        let password = password.to_owned();
        let cost = self.cost;
        self.run(client, move || bcrypt::hash(password, cost).map_err(|e| PasswordError::Failed(e.to_string()))).await
    }

    /// Whether `password` matches `hash`; with no hash (unknown user), a dummy check that
    /// takes as long and always fails. Checked in `client`'s turn, as for `hash`.
    pub async fn verify(&self, password: &str, hash: Option<&str>, client: &str) -> Result<bool, PasswordError> {
        // bcrypt would compare only the first 72 bytes; a longer attempt can never be right, and
        // is checked against the dummy hash so that it takes as long as any other.
        let hash = if password.len() > crate::domain::Password::MAX_BYTES { None } else { hash };
        let password = password.to_owned();
        let (hash, real) = match hash {
            Some(h) => (h.to_owned(), true),
            None => (self.dummy_hash().await?.to_string(), false),
        };
        let at_configured_cost = cost_of(&hash) == Some(self.cost);
        let check_micros = self.check_micros.clone();
        let (matched, started) = self
            .run(client, move || {
                let started = Instant::now();
                let matched = bcrypt::verify(password, &hash).unwrap_or(false);
                if at_configured_cost {
                    // A moving average (7/8 old, 1/8 new): steady against one slow run.
                    let took = micros(started.elapsed());
                    let _ = check_micros.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                        Some(if old == 0 { took } else { (old * 7 + took) / 8 })
                    });
                }
                Ok((matched, started))
            })
            .await?;
        if !at_configured_cost {
            // A hash of a lower cost (made before BCRYPT_COST was raised) checks faster than the
            // dummy hash of an unknown address: wait out the difference.
            self.pace(started, 1).await;
        }
        Ok(real && matched)
    }

    async fn run<T: Send + 'static>(
        &self,
        client: &str,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // The guards give the places back however the wait ends, a cancelled call included.
                let place = WaitingPlace::take(&self.waiting, self.max_waiting).ok_or(PasswordError::Overloaded)?;
                let max_for_client = (self.max_waiting / CLIENT_SHARE_OF_WAITING).max(1);
                let (client_place, turn) =
                    ClientPlace::take(&self.clients, client, max_for_client).ok_or(PasswordError::Overloaded)?;
                let queued = async {
                    // This client's earlier calls go first; then one place in the slots' queue.
                    let _turn = turn.lock().await;
                    self.slots.clone().acquire_owned().await
                };
                let waited = tokio::time::timeout(QUEUE_WAIT, queued).await;
                drop((client_place, place));
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

/// The cost a bcrypt hash was made with (`$2b$12$...` → 12).
pub fn cost_of(hash: &str) -> Option<u32> {
    hash.split('$').nth(2).and_then(|c| c.parse().ok())
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
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

/// One client's calls waiting for a slot, and its turn: the lock its waiting calls take one at a
/// time (tokio's Mutex is FIFO) before they queue for a slot.
#[derive(Default)]
struct ClientQueue {
    waiting: usize,
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// One of a client's waiting places, given back on drop; the client's entry goes with its last.
struct ClientPlace<'a> {
    clients: &'a Mutex<HashMap<String, ClientQueue>>,
    client: String,
}

impl<'a> ClientPlace<'a> {
    /// A place for `client` and its turn, or None when it already has `max` calls waiting.
    fn take(
        clients: &'a Mutex<HashMap<String, ClientQueue>>,
        client: &str,
        max: usize,
    ) -> Option<(Self, Arc<tokio::sync::Mutex<()>>)> {
        let mut map = clients.lock().expect("no panics while holding this lock");
        let queue = map.entry(client.to_owned()).or_default();
        if queue.waiting >= max {
            return None;
        }
        queue.waiting += 1;
        let turn = queue.turn.clone();
        Some((Self { clients, client: client.to_owned() }, turn))
    }
}

impl Drop for ClientPlace<'_> {
    fn drop(&mut self) {
        let mut map = self.clients.lock().expect("no panics while holding this lock");
        if let Some(queue) = map.get_mut(&self.client) {
            queue.waiting -= 1;
            if queue.waiting == 0 {
                map.remove(&self.client);
            }
        }
    }
}
