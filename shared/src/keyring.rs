//! The public keys that verify access tokens, read from the `signing_keys` table.
//!
//! The database is the rendezvous between issuers and verifiers: each auth-service instance
//! registers the public half of its key there, and verifiers load the rows at start and again
//! when they meet an unknown `kid` (at most once a second), so they never call auth-service and
//! accept a new instance's key at once.

use jsonwebtoken::DecodingKey;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How often a miss may trigger a reload: an attacker's random `kid`s cost one query a second.
const MISS_RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How often known keys are refreshed anyway, so a retired key stops verifying.
const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// One row of `signing_keys` that verifies now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PublicKeyRow {
    pub kid: String,
    pub public_key: Vec<u8>,
}

/// Keys that verify now: not retired, or retired in the future.
pub async fn active_keys(pool: &PgPool) -> Result<Vec<PublicKeyRow>, sqlx::Error> {
    sqlx::query_as::<_, PublicKeyRow>(
        "SELECT kid, public_key FROM signing_keys
         WHERE retired_at IS NULL OR retired_at > now()
         ORDER BY created_at, kid",
    )
    .fetch_all(pool)
    .await
}

struct Loaded {
    keys: Arc<HashMap<String, DecodingKey>>,
    at: Option<Instant>,
}

/// A cache of the verifying keys by `kid`.
pub struct KeyRing {
    pool: PgPool,
    loaded: RwLock<Loaded>,
    reload_lock: tokio::sync::Mutex<()>,
}

/// Why no key could be found for a `kid`.
#[derive(Debug)]
pub enum KeyLookupError {
    UnknownKid,
    Database(sqlx::Error),
}

impl KeyRing {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            loaded: RwLock::new(Loaded { keys: Arc::new(HashMap::new()), at: None }),
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The key for `kid`, reloading from the database when it is unknown (rate-limited) or when
    /// the cache is older than the refresh interval.
    pub async fn get(&self, kid: &str) -> Result<DecodingKey, KeyLookupError> {
        let (hit, age) = self.lookup(kid);
        match hit {
            Some(key) if age.is_some_and(|a| a < REFRESH_INTERVAL) => return Ok(key),
            Some(key) => {
                // Stale but known: answer now; a failed refresh keeps the old keys.
                if let Err(e) = self.reload_if_older_than(REFRESH_INTERVAL).await {
                    tracing::warn!(error = %e, "could not refresh signing keys");
                }
                return Ok(self.lookup(kid).0.unwrap_or(key));
            }
            None => {}
        }
        self.reload_if_older_than(MISS_RELOAD_INTERVAL).await.map_err(KeyLookupError::Database)?;
        self.lookup(kid).0.ok_or(KeyLookupError::UnknownKid)
    }

    fn lookup(&self, kid: &str) -> (Option<DecodingKey>, Option<Duration>) {
        let loaded = self.loaded.read().expect("key ring lock is never poisoned: no panics inside");
        (loaded.keys.get(kid).cloned(), loaded.at.map(|at| at.elapsed()))
    }

    async fn reload_if_older_than(&self, max_age: Duration) -> Result<(), sqlx::Error> {
        let _guard = self.reload_lock.lock().await;
        // Another caller may have reloaded while this one waited for the lock.
        if self.lookup("").1.is_some_and(|age| age < max_age) {
            return Ok(());
        }
        self.reload().await
    }

    /// Loads every active key now.
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let rows = active_keys(&self.pool).await?;
        let keys = rows
            .into_iter()
            .filter(|row| row.public_key.len() == 32)
            .map(|row| (row.kid, DecodingKey::from_ed_der(&row.public_key)))
            .collect::<HashMap<_, _>>();
        let mut loaded = self.loaded.write().expect("key ring lock is never poisoned: no panics inside");
        *loaded = Loaded { keys: Arc::new(keys), at: Some(Instant::now()) };
        Ok(())
    }
}
