//! Revoked sessions, known to a verifier within moments and at no per-request cost.
//!
//! One dedicated connection LISTENs for `session_revoked` (sent by a trigger when a session is
//! revoked or deleted) and `signing_keys_changed`. Once LISTEN is active, the sessions revoked or
//! deleted in the last `window` are loaded (a deleted session's id stays in `session_deletions`),
//! so nothing falls between the load and the notifications, and a reconnect forgets nothing. Ids are
//! kept for `window`, which must be at least the longest access-token lifetime: after that every
//! token of the session has expired anyway.
//!
//! Fail safe: the list is trusted only while the listener demonstrably hears notifications: every
//! second a heartbeat is NOTIFYed through the pool, as any revocation is, and if none has been
//! heard for three seconds (a dropped or half-open connection, a pooler in transaction mode that
//! never delivers notifications) each check asks the database instead (refusing when it cannot),
//! and the listener reconnects and loads the list again.
//!
//! Idle, it lets the database sleep: with no calls and no streams for `activity::IDLE_AFTER`
//! the heartbeat stops, the listener closes its connection once the list goes stale, and it
//! connects again only at the next call. The first calls after an idle spell check their session
//! in the database (the list is not live) until the listener has loaded the list again, which
//! those calls start; so a session revoked meanwhile is refused all the same. The key ring is
//! marked stale as the listener closes, so the first call also reloads the keys: a key retired
//! meanwhile verifies nothing.

use crate::access::keyring::KeyRing;
use crate::access::token::TokenError;
use crate::database::Db;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

const SESSION_REVOKED: &str = "session_revoked";
const SIGNING_KEYS_CHANGED: &str = "signing_keys_changed";
const HEARTBEAT: &str = "revocation_heartbeat";
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// With nothing heard for this long, the list is not trusted and the connection is replaced.
const HEARTBEAT_STALE: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The sessions revoked in the last `window`, kept current by LISTEN, and the check each call
/// makes against them (or against the database while the list cannot be trusted).
pub struct Revocations {
    pool: Db,
    window: Duration,
    /// Revoked session id -> when it may be forgotten.
    revoked: RwLock<HashMap<Uuid, Instant>>,
    /// True only while LISTEN is active and the list is complete.
    live: AtomicBool,
    /// When the listener last heard any notification (heartbeats included).
    last_heard: RwLock<Instant>,
}

impl Revocations {
    /// An empty list, not live until `spawn_listener_on` has loaded it; until then each check asks
    /// the database. `window`: how long a revoked session is remembered (at least the longest
    /// access-token lifetime).
    pub fn new(pool: Db, window: Duration) -> Arc<Self> {
        Arc::new(Self {
            pool,
            window,
            revoked: RwLock::new(HashMap::new()),
            live: AtomicBool::new(false),
            last_heard: RwLock::new(Instant::now()),
        })
    }

    /// Whether the in-memory list is being kept current (for tests and health).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire) && self.heard_within() < HEARTBEAT_STALE
    }

    fn heard_within(&self) -> Duration {
        self.last_heard.read().expect("revocation lock is never poisoned: no panics inside").elapsed()
    }

    fn heard(&self) {
        *self.last_heard.write().expect("revocation lock is never poisoned: no panics inside") = Instant::now();
    }

    /// Refuses a revoked (or deleted) session.
    pub async fn check(&self, session_id: Uuid, user_id: Uuid) -> Result<(), TokenError> {
        if self.is_live() {
            let revoked = self.revoked.read().expect("revocation lock is never poisoned: no panics inside");
            return if revoked.contains_key(&session_id) { Err(TokenError::Revoked) } else { Ok(()) };
        }
        let live: Option<bool> = crate::database::statement::observed(
            "session_live",
            sqlx::query_scalar("SELECT revoked_at IS NULL FROM sessions WHERE id = $1 AND user_id = $2")
                .bind(session_id)
                .bind(user_id)
                .fetch_optional(&self.pool),
        )
        .await
        .map_err(TokenError::Database)?;
        if live == Some(true) { Ok(()) } else { Err(TokenError::Revoked) }
    }

    /// Keeps the list (and `keys`) current until the task is aborted, reconnecting with backoff,
    /// on a connection made with `options`: a direct one when the pool goes through a pooler in
    /// transaction mode, which cannot deliver notifications (`database::direct_options`).
    pub fn spawn_listener_on(
        self: &Arc<Self>,
        keys: Arc<KeyRing>,
        options: sqlx::postgres::PgConnectOptions,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        // Its own one-connection pool: the listener holds its connection for good, which must
        // not starve the calls of the main pool.
        let listener_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        tokio::spawn(async move {
            let activity = this.pool.activity().clone();
            let mut backoff = Duration::from_millis(100);
            loop {
                // Connects only when there is work: a reconnect loop would wake a suspended
                // serverless compute for nobody.
                activity.until_active().await;
                let started = Instant::now();
                let result = this.listen(&listener_pool, &keys).await;
                this.live.store(false, Ordering::Release);
                match result {
                    Ok(Ended::Idle) => {
                        // Nothing tells the key ring of a retirement until the listener is back:
                        // the first call after reloads the keys itself.
                        keys.mark_stale();
                        tracing::info!("no calls: revocation listener closed until the next call");
                        backoff = Duration::from_millis(100);
                        continue;
                    }
                    Ok(Ended::Lost) => {
                        tracing::warn!("revocation listener lost its connection; checking sessions in the database")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "revocation listener failed; checking sessions in the database")
                    }
                }
                if started.elapsed() > MAX_BACKOFF * 2 {
                    backoff = Duration::from_millis(100);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }

    /// One connection's life: LISTEN, load, then apply notifications until it drops, goes quiet
    /// for longer than the heartbeat allows, or the service has had no calls for a while.
    async fn listen(&self, listener_pool: &sqlx::PgPool, keys: &KeyRing) -> Result<Ended, sqlx::Error> {
        let mut listener = PgListener::connect_with(listener_pool).await?;
        listener.listen_all([SESSION_REVOKED, SIGNING_KEYS_CHANGED, HEARTBEAT]).await?;
        self.load().await?;
        keys.reload().await?;
        self.heard();
        self.live.store(true, Ordering::Release);
        tracing::info!("revocation listener live");
        let pool = self.pool.clone();
        // Aborted when this function ends, however it ends (the listener task may be aborted).
        let _heartbeat = AbortOnDrop(tokio::spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                every.tick().await;
                if !pool.activity().is_active() {
                    // Idle: the listener hears nothing, ends, and comes back with the next call.
                    continue;
                }
                // Through the main pool, the way revocations travel.
                if let Err(e) = sqlx::query("SELECT pg_notify($1, '')").bind(HEARTBEAT).execute(&pool).await {
                    tracing::debug!(error = %e, "could not send a revocation heartbeat");
                }
            }
        }));
        self.receive(&mut listener, keys).await
    }

    async fn receive(&self, listener: &mut PgListener, keys: &KeyRing) -> Result<Ended, sqlx::Error> {
        let mut last_prune = Instant::now();
        loop {
            // try_recv gives None when the connection is lost; notifications in between are lost,
            // which is why the next connection reloads everything. A timeout means silence: the
            // connection is replaced rather than trusted, or closed when the heartbeat stopped
            // because the service is idle.
            let Ok(received) = tokio::time::timeout(HEARTBEAT_STALE, listener.try_recv()).await else {
                if !self.pool.activity().is_active() {
                    return Ok(Ended::Idle);
                }
                tracing::warn!("no notification heard for {HEARTBEAT_STALE:?}, heartbeats included");
                return Ok(Ended::Lost);
            };
            let Some(notification) = received? else { return Ok(Ended::Lost) };
            self.heard();
            match notification.channel() {
                SESSION_REVOKED => match notification.payload().parse::<Uuid>() {
                    Ok(id) => self.insert(id),
                    Err(_) => tracing::warn!("ignoring a malformed session_revoked notification"),
                },
                SIGNING_KEYS_CHANGED => {
                    if let Err(e) = keys.reload().await {
                        tracing::warn!(error = %e, "could not reload signing keys after a change");
                    }
                }
                _ => {}
            }
            if last_prune.elapsed() > Duration::from_secs(60) {
                self.prune();
                last_prune = Instant::now();
            }
        }
    }

    async fn load(&self) -> Result<(), sqlx::Error> {
        // Deleted sessions are revoked too; their ids outlive their rows in session_deletions.
        let ids: Vec<Uuid> = crate::database::statement::observed(
            "revoked_sessions",
            sqlx::query_scalar(
                "SELECT id FROM sessions WHERE revoked_at > now() - make_interval(secs => $1)
             UNION ALL
             SELECT session_id FROM session_deletions WHERE deleted_at > now() - make_interval(secs => $1)",
            )
            .bind(self.window.as_secs_f64())
            .fetch_all(&self.pool),
        )
        .await?;
        let forget_at = Instant::now() + self.window;
        let mut revoked = self.revoked.write().expect("revocation lock is never poisoned: no panics inside");
        revoked.extend(ids.into_iter().map(|id| (id, forget_at)));
        Ok(())
    }

    fn insert(&self, id: Uuid) {
        let forget_at = Instant::now() + self.window;
        self.revoked.write().expect("revocation lock is never poisoned: no panics inside").insert(id, forget_at);
    }

    fn prune(&self) {
        let now = Instant::now();
        self.revoked
            .write()
            .expect("revocation lock is never poisoned: no panics inside")
            .retain(|_, forget_at| *forget_at > now);
    }
}

/// Why a listener's connection ended without an error.
enum Ended {
    /// The connection dropped, or went silent while the service had calls.
    Lost,
    /// The service had no calls: closed on purpose, to be opened by the next call.
    Idle,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
