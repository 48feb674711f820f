//! Waking the WatchTasks streams of a user when that user's tasks change, on every instance.
//!
//! Every change to a user's tasks updates the user's row in `task_feeds`, stamping it with the
//! writer's transaction id (`changed_xid`). One task per instance polls, every 50 ms, for the
//! feeds stamped at or above the oldest transaction that was still running at its previous poll:
//! every transaction below that had finished by then, so its changes were visible to that poll,
//! and none is skipped however late it commits. It asks only about the users with streams here,
//! by primary key: changed_xid has no index (migration 0011), so stamping it is a HOT update.
//! The poll wakes the streams of the users it finds; each stream then reads the feed from its own
//! position, so a wake-up carries no data and an extra one costs a query that finds nothing. (NOTIFY would wake sooner, but a notifying
//! transaction holds a database-wide lock through its commit: every task write would commit one
//! after another.)
//!
//! The poll runs only while the instance has streams: without any it sends nothing, so that a
//! serverless database can suspend. The first stream to open starts it again; its first poll
//! only sets the horizon, and wakes every stream to read its feed once (as after failed polls),
//! which covers what committed before that horizon.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use todo_shared::database::Db;
use todo_shared::server::in_flight::InFlight;
use tokio::sync::watch;
use uuid::Uuid;

/// How often an instance looks for changed feeds: the latency of a live change, at most.
const POLL: Duration = Duration::from_millis(50);
/// With no successful poll for this long, streams read their feeds every second themselves.
const STALE: Duration = Duration::from_secs(3);

pub struct Hub {
    /// A counter per user with open streams, bumped on each notification for that user.
    users: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    /// Bumped when every stream must look (after polls failed).
    everyone: watch::Sender<u64>,
    /// Set when the server starts to stop.
    closing: watch::Sender<bool>,
    live: AtomicBool,
    last_heard: Mutex<Instant>,
    /// The WatchTasks responses still being sent.
    pub(crate) open_streams: InFlight,
    /// Woken when a stream subscribes, for a poller paused while there were none.
    subscribed: tokio::sync::Notify,
}

/// What a stream waits on: its user's changes, a wake-up for all, and the server's stop.
pub struct Subscription {
    pub hub: Arc<Hub>,
    user_id: Uuid,
    user: Option<watch::Receiver<u64>>,
    everyone: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
}

pub enum Wake {
    Changed,
    Closing,
}

impl Subscription {
    /// Resolves when this user's feed may have moved, or the server starts to stop.
    pub async fn next(&mut self) -> Wake {
        let user = self.user.as_mut().expect("present until drop");
        // The senders live in the hub, which this subscription holds: changed() cannot fail.
        tokio::select! {
            biased;
            _ = self.closing.changed() => Wake::Closing,
            _ = user.changed() => Wake::Changed,
            _ = self.everyone.changed() => Wake::Changed,
        }
    }

    pub fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.user.take());
        let mut users = self.hub.users.lock().expect("hub lock is never poisoned: no panics inside");
        if users.get(&self.user_id).is_some_and(|tx| tx.receiver_count() == 0) {
            users.remove(&self.user_id);
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            users: Mutex::new(HashMap::new()),
            everyone: watch::Sender::new(0),
            closing: watch::Sender::new(false),
            live: AtomicBool::new(false),
            last_heard: Mutex::new(Instant::now()),
            open_streams: InFlight::default(),
            subscribed: tokio::sync::Notify::new(),
        })
    }

    /// Subscribes before the stream reads the feed, so a change committed in between wakes it;
    /// None when `user_id` already has `max` subscriptions (open streams) on this instance.
    pub fn subscribe(self: &Arc<Self>, user_id: Uuid, max: usize) -> Option<Subscription> {
        let user = {
            let mut users = self.users.lock().expect("hub lock is never poisoned: no panics inside");
            let sender = users.entry(user_id).or_insert_with(|| watch::Sender::new(0));
            // Each open stream holds one receiver: the count is the user's streams here.
            if sender.receiver_count() >= max {
                return None;
            }
            sender.subscribe()
        };
        self.subscribed.notify_waiters();
        Some(Subscription {
            hub: self.clone(),
            user_id,
            user: Some(user),
            everyone: self.everyone.subscribe(),
            closing: self.closing.subscribe(),
        })
    }

    /// Whether the poll is running; if not, streams read the feed every second.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
            && self.last_heard.lock().expect("hub lock is never poisoned: no panics inside").elapsed() < STALE
    }

    /// Becomes true when the server starts to stop.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Tells every stream to end (server shutdown) and waits at most `wait` for them to be sent.
    pub async fn close(&self, wait: Duration) {
        self.closing.send_replace(true);
        let _ = tokio::time::timeout(wait, self.open_streams.idle()).await;
    }

    fn wake_everyone(&self) {
        self.everyone.send_modify(|n| *n += 1);
    }

    /// Resolves once some user has a stream here.
    async fn until_watched(&self) {
        loop {
            let subscribed = self.subscribed.notified();
            tokio::pin!(subscribed);
            // Registered before the check: a stream subscribing in between still wakes it.
            subscribed.as_mut().enable();
            if !self.users.lock().expect("hub lock is never poisoned: no panics inside").is_empty() {
                return;
            }
            subscribed.await;
        }
    }

    /// Polls while there are streams, until the task is aborted.
    pub fn spawn_poller(self: &Arc<Self>, pool: &Db) -> tokio::task::JoinHandle<()> {
        let (this, pool) = (self.clone(), pool.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(POLL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The oldest transaction running at the previous poll; None until the first.
            let mut horizon: Option<String> = None;
            // As if failing before the first poll: streams that began before it look once after.
            let mut failing = true;
            loop {
                if this.users.lock().expect("hub lock is never poisoned: no panics inside").is_empty() {
                    // Nobody to wake: no poll until a stream opens. The horizon is forgotten, and
                    // the first poll after is treated like one after failures (everyone looks).
                    this.live.store(false, Ordering::Release);
                    horizon = None;
                    failing = true;
                    this.until_watched().await;
                    every.reset_immediately();
                }
                every.tick().await;
                match this.poll(&pool, horizon.as_deref()).await {
                    Ok(next) => {
                        horizon = Some(next);
                        *this.last_heard.lock().expect("hub lock is never poisoned: no panics inside") = Instant::now();
                        this.live.store(true, Ordering::Release);
                        if failing {
                            // Changes may have been missed while the polls failed: everyone looks.
                            failing = false;
                            this.wake_everyone();
                        }
                    }
                    Err(e) => {
                        if !failing || horizon.is_none() {
                            tracing::warn!(error = %e, "change-feed poll failed; streams read their feeds every second");
                        }
                        failing = true;
                        this.live.store(false, Ordering::Release);
                    }
                }
            }
        })
    }

    /// One poll: wakes the users whose feeds were stamped at or after `horizon`, and returns the
    /// horizon for the next poll (read in the same snapshot).
    async fn poll(&self, pool: &Db, horizon: Option<&str>) -> Result<String, sqlx::Error> {
        // Only the users with streams here: a bulk change to many feeds returns few rows.
        let watched: Vec<Uuid> =
            self.users.lock().expect("hub lock is never poisoned: no panics inside").keys().copied().collect();
        let rows: Vec<(String, Option<Uuid>)> = sqlx::query_as(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, f.user_id
             FROM (SELECT 1) one
             LEFT JOIN task_feeds f
               ON $1::text IS NOT NULL AND f.changed_xid >= $1::text::xid8 AND f.user_id = ANY($2)",
        )
        .bind(horizon)
        .bind(&watched)
        .fetch_all(pool)
        .await?;
        let next = rows.first().map(|(h, _)| h.clone()).unwrap_or_default();
        let users = self.users.lock().expect("hub lock is never poisoned: no panics inside");
        for user_id in rows.iter().filter_map(|(_, user)| *user) {
            if let Some(tx) = users.get(&user_id) {
                tx.send_modify(|n| *n += 1);
            }
        }
        // Streams that subscribed while the poll ran were not asked about, and a change they
        // have not read may be below the next horizon: they look once.
        let asked: std::collections::HashSet<&Uuid> = watched.iter().collect();
        for (user_id, tx) in users.iter() {
            if !asked.contains(user_id) {
                tx.send_modify(|n| *n += 1);
            }
        }
        Ok(next)
    }
}
