//! The public keys that verify access tokens, read from the `signing_keys` table.
//!
//! The database is the rendezvous between issuers and verifiers: each auth-service instance
//! registers the public half of its key there, and verifiers load the rows at start and again
//! when they meet an unknown `kid` (at most every 250 ms), so they never call auth-service and
//! accept a new instance's key at once.

use crate::database::Db;
use chrono::{DateTime, Utc};
use jsonwebtoken::DecodingKey;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How often misses may trigger a reload: an attacker's random `kid`s cost at most four
/// queries a second, however many they send.
const MISS_RELOAD_INTERVAL: Duration = Duration::from_millis(250);
/// How often known keys are refreshed anyway, so a retired key stops verifying.
const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// One row of `signing_keys` that verifies now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PublicKeyRow {
    /// The key id: the RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// The raw 32-byte Ed25519 public key (RFC 8032).
    pub public_key: Vec<u8>,
    /// When set, the key stops verifying at this moment.
    pub retired_at: Option<DateTime<Utc>>,
}

/// Keys that verify now: not retired, or retired in the future.
pub async fn active_keys(pool: &Db) -> Result<Vec<PublicKeyRow>, sqlx::Error> {
    crate::database::statement::observed(
        "active_keys",
        sqlx::query_as::<_, PublicKeyRow>(
            "SELECT kid, public_key, retired_at FROM signing_keys
             WHERE retired_at IS NULL OR retired_at > now()
             ORDER BY created_at, kid",
        )
        .fetch_all(pool),
    )
    .await
}

#[derive(Clone)]
struct ActiveKey {
    key: DecodingKey,
    retired_at: Option<DateTime<Utc>>,
}

impl ActiveKey {
    fn usable(&self) -> Option<DecodingKey> {
        match self.retired_at {
            Some(at) if at <= Utc::now() => None,
            _ => Some(self.key.clone()),
        }
    }
}

struct Loaded {
    keys: Arc<HashMap<String, ActiveKey>>,
    /// When the query that loaded these keys began.
    at: Option<Instant>,
}

struct Snapshot {
    key: Option<DecodingKey>,
    age: Option<Duration>,
}

/// A cache of the verifying keys by `kid`.
pub struct KeyRing {
    pool: Db,
    loaded: RwLock<Loaded>,
    reload_lock: tokio::sync::Mutex<()>,
    last_attempt: RwLock<Option<Attempt>>,
}

#[derive(Clone, Copy)]
struct Attempt {
    started: Instant,
    succeeded: bool,
}

/// Why no key could be found for a `kid`.
#[derive(Debug)]
pub enum KeyLookupError {
    /// No key with this kid verifies, even after a reload.
    UnknownKid,
    /// The keys could not be loaded, and this kid was not known before.
    Database(sqlx::Error),
}

impl KeyRing {
    /// An empty ring that loads from `signing_keys` in `pool` on first use.
    pub fn new(pool: Db) -> Self {
        Self {
            pool,
            loaded: RwLock::new(Loaded { keys: Arc::new(HashMap::new()), at: None }),
            reload_lock: tokio::sync::Mutex::new(()),
            last_attempt: RwLock::new(None),
        }
    }

    /// A ring holding `keys` (kid, raw 32-byte Ed25519 public key) as if just loaded: for unit
    /// tests of the verifier, which must reach the signature check without a database.
    #[cfg(test)]
    pub(crate) fn loaded_with(pool: Db, keys: &[(&str, [u8; 32])]) -> Self {
        let ring = Self::new(pool);
        let keys = keys
            .iter()
            .map(|(kid, public)| {
                (kid.to_string(), ActiveKey { key: DecodingKey::from_ed_der(public), retired_at: None })
            })
            .collect();
        *ring.loaded.write().expect("key ring lock is never poisoned: no panics inside") =
            Loaded { keys: Arc::new(keys), at: Some(Instant::now()) };
        ring
    }

    /// A key ring loaded now if the database answers; otherwise it loads on first use.
    pub async fn load(pool: Db) -> Arc<Self> {
        let keys = Arc::new(Self::new(pool));
        if let Err(e) = keys.reload().await {
            tracing::warn!(error = %e, "could not load verification keys yet; will retry on first use");
        }
        keys
    }

    /// The key for `kid`. An unknown `kid` (a key registered after the last load) triggers a
    /// reload; concurrent misses share one, and reloads are at least MISS_RELOAD_INTERVAL apart,
    /// waiting out the rest of the interval rather than refusing a key that may be new. Known keys
    /// are refreshed every REFRESH_INTERVAL so that retired keys drop out.
    pub async fn get(&self, kid: &str) -> Result<DecodingKey, KeyLookupError> {
        let asked = Instant::now();
        let seen = self.snapshot(kid);
        if let Some(key) = &seen.key
            && seen.age.is_some_and(|age| age < REFRESH_INTERVAL)
        {
            return Ok(key.clone());
        }
        let _guard = self.reload_lock.lock().await;
        let last = *self.last_attempt.read().expect("key ring lock is never poisoned: no panics inside");
        match last {
            // A reload began after we were asked: its outcome is ours too. While the database is
            // away, waiters thus share one failed attempt instead of queueing one each.
            Some(attempt) if attempt.started >= asked && attempt.succeeded => {}
            Some(attempt) if attempt.started >= asked => {
                // sqlx's own "gave up waiting for a connection": reported as UNAVAILABLE.
                return seen.key.ok_or(KeyLookupError::Database(sqlx::Error::PoolTimedOut));
            }
            _ => {
                if let Some(attempt) = last
                    && attempt.started.elapsed() < MISS_RELOAD_INTERVAL
                {
                    tokio::time::sleep(MISS_RELOAD_INTERVAL - attempt.started.elapsed()).await;
                }
                if let Err(e) = self.reload().await {
                    // A known key stays usable while the database is away; an unknown one cannot be.
                    return seen.key.ok_or(KeyLookupError::Database(e));
                }
            }
        }
        self.snapshot(kid).key.ok_or(KeyLookupError::UnknownKid)
    }

    fn snapshot(&self, kid: &str) -> Snapshot {
        let loaded = self.loaded.read().expect("key ring lock is never poisoned: no panics inside");
        Snapshot { key: loaded.keys.get(kid).and_then(ActiveKey::usable), age: loaded.at.map(|at| at.elapsed()) }
    }

    /// Whether `kid` verifies now according to a fresh enough load, without touching the
    /// database: what a cached verification must still satisfy.
    pub fn is_usable(&self, kid: &str) -> bool {
        let snapshot = self.snapshot(kid);
        snapshot.key.is_some() && snapshot.age.is_some_and(|age| age < REFRESH_INTERVAL)
    }

    /// Treats the loaded keys as stale: the next lookup reloads them before answering. For when
    /// what keeps them current stops on purpose (the revocation listener of an idle service), so
    /// that a key retired meanwhile is not accepted by the first calls after.
    pub fn mark_stale(&self) {
        self.loaded.write().expect("key ring lock is never poisoned: no panics inside").at = None;
    }

    /// Loads every active key now.
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let rows = active_keys(&self.pool).await;
        *self.last_attempt.write().expect("key ring lock is never poisoned: no panics inside") =
            Some(Attempt { started, succeeded: rows.is_ok() });
        let rows = rows?;
        let keys = rows
            .into_iter()
            .filter(|row| row.public_key.len() == 32)
            .map(|row| {
                (row.kid, ActiveKey { key: DecodingKey::from_ed_der(&row.public_key), retired_at: row.retired_at })
            })
            .collect::<HashMap<_, _>>();
        let mut loaded = self.loaded.write().expect("key ring lock is never poisoned: no panics inside");
        *loaded = Loaded { keys: Arc::new(keys), at: Some(started) };
        Ok(())
    }
}
