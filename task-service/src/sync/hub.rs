//! Waking the WatchTasks streams of a user when that user's tasks change, on every instance.
//!
//! The change-feed trigger NOTIFYs `task_changes` with the user id when a change commits (`*`
//! when every feed starts over). One connection per instance LISTENs and wakes that user's
//! streams here; each stream then reads the feed itself, from its own position, so a
//! notification carries no data and a lost or merged one loses nothing as long as some wake-up
//! follows. The listener is trusted only while it also hears the revocation heartbeat (sent every
//! second through the main pool): otherwise streams read the feed every second instead, and after
//! a reconnect every stream is woken once, since notifications in the gap are lost.

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use todo_shared::in_flight::InFlight;
use todo_shared::revocation::HEARTBEAT;
use tokio::sync::watch;
use uuid::Uuid;

const TASK_CHANGES: &str = "task_changes";
/// With nothing heard for this long (heartbeats included), the connection is not trusted.
const STALE: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Hub {
    /// A counter per user with open streams, bumped on each notification for that user.
    users: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    /// Bumped when every stream must look (a feed reset, a reconnect).
    everyone: watch::Sender<u64>,
    /// Set when the server starts to stop.
    closing: watch::Sender<bool>,
    live: AtomicBool,
    last_heard: Mutex<Instant>,
    /// The WatchTasks responses still being sent.
    pub(crate) open_streams: InFlight,
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
        })
    }

    /// Subscribes before the stream reads the feed, so a change committed in between wakes it.
    pub fn subscribe(self: &Arc<Self>, user_id: Uuid) -> Subscription {
        let user = {
            let mut users = self.users.lock().expect("hub lock is never poisoned: no panics inside");
            users.entry(user_id).or_insert_with(|| watch::Sender::new(0)).subscribe()
        };
        Subscription {
            hub: self.clone(),
            user_id,
            user: Some(user),
            everyone: self.everyone.subscribe(),
            closing: self.closing.subscribe(),
        }
    }

    /// Whether notifications are being heard; if not, streams read the feed every second.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
            && self.last_heard.lock().expect("hub lock is never poisoned: no panics inside").elapsed() < STALE
    }

    /// Tells every stream to end (server shutdown) and waits at most `wait` for them to be sent.
    pub async fn close(&self, wait: Duration) {
        self.closing.send_replace(true);
        let _ = tokio::time::timeout(wait, self.open_streams.idle()).await;
    }

    fn wake(&self, payload: &str) {
        match payload.parse::<Uuid>() {
            Ok(user_id) => {
                if let Some(tx) = self.users.lock().expect("hub lock is never poisoned: no panics inside").get(&user_id)
                {
                    tx.send_modify(|n| *n += 1);
                }
            }
            Err(_) => self.wake_everyone(),
        }
    }

    fn wake_everyone(&self) {
        self.everyone.send_modify(|n| *n += 1);
    }

    /// Keeps listening until the task is aborted, reconnecting with backoff.
    pub fn spawn_listener(self: &Arc<Self>, pool: &PgPool) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        // Its own connection, held for good, outside the pool that serves calls.
        let listener_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with((*pool.connect_options()).clone());
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let started = Instant::now();
                if let Err(e) = this.listen(&listener_pool).await {
                    tracing::warn!(error = %e, "change-feed listener failed; streams read the feed every second");
                }
                this.live.store(false, Ordering::Release);
                if started.elapsed() > MAX_BACKOFF * 2 {
                    backoff = Duration::from_millis(100);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        })
    }

    async fn listen(&self, listener_pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(listener_pool).await?;
        listener.listen_all([TASK_CHANGES, HEARTBEAT]).await?;
        *self.last_heard.lock().expect("hub lock is never poisoned: no panics inside") = Instant::now();
        self.live.store(true, Ordering::Release);
        // Changes committed while no one listened: every stream looks once.
        self.wake_everyone();
        tracing::info!("change-feed listener live");
        loop {
            let Ok(received) = tokio::time::timeout(STALE, listener.try_recv()).await else {
                tracing::warn!("change-feed listener heard nothing for {STALE:?}, heartbeats included");
                return Ok(());
            };
            let Some(notification) = received? else { return Ok(()) };
            *self.last_heard.lock().expect("hub lock is never poisoned: no panics inside") = Instant::now();
            if notification.channel() == TASK_CHANGES {
                self.wake(notification.payload());
            }
        }
    }
}
