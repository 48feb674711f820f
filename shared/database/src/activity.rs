//! Whether the service has work, so that its background work stops while it has none and a
//! serverless PostgreSQL (Neon suspends its compute after minutes without a query) can sleep.
//!
//! Calls and open streams count as work; health checks do not (Kubernetes probes every few
//! seconds, and an idle service must stay idle under them). Every background job that queries
//! the database on its own (the health probe, the revocation listener and its heartbeat, the
//! change-feed poll, housekeeping) runs only while [`Activity::is_active`], and waits on
//! [`Activity::until_active`] otherwise, so with no calls and no streams an instance sends no
//! statement at all from [`IDLE_AFTER`] (plus at most one heartbeat period) after its last call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long after its last call an instance counts as idle. Half of the minute after which the
/// serverless goal asks for no query at all, which leaves the listener's staleness window and a
/// probe in flight room to end.
pub const IDLE_AFTER: Duration = Duration::from_secs(30);

/// When the service last had work; cloned, it is the same record. `Db::activity` holds one.
#[derive(Clone, Debug)]
pub struct Activity {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// What `last` counts from.
    origin: Instant,
    /// Milliseconds from `origin` to the last call (0: none yet, which counts as a call at start).
    last: AtomicU64,
    /// Woken by the first call after an idle spell.
    woken: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// A record whose last call is now: a service starting is active for `IDLE_AFTER`.
    pub fn new() -> Self {
        Self { inner: Arc::new(Inner { origin: Instant::now(), last: AtomicU64::new(0), woken: Notify::new() }) }
    }

    fn now_millis(&self) -> u64 {
        u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records a call (or a second of an open stream): two atomic operations, and a wake-up of
    /// the paused background jobs when the instance was idle.
    pub fn touch(&self) {
        let now = self.now_millis();
        let before = self.inner.last.swap(now, Ordering::AcqRel);
        if Duration::from_millis(now.saturating_sub(before)) >= IDLE_AFTER {
            self.inner.woken.notify_waiters();
        }
    }

    /// The time since the last call.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(self.now_millis().saturating_sub(self.inner.last.load(Ordering::Acquire)))
    }

    /// True while the last call is less than `IDLE_AFTER` ago.
    pub fn is_active(&self) -> bool {
        self.idle_for() < IDLE_AFTER
    }

    /// Resolves at once while active, else at the next call.
    pub async fn until_active(&self) {
        loop {
            let woken = self.inner.woken.notified();
            tokio::pin!(woken);
            // Registered before the check: a call between the check and the wait still wakes it.
            woken.as_mut().enable();
            if self.is_active() {
                return;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fresh_record_is_active_and_a_call_wakes_a_waiter() {
        let activity = Activity::new();
        assert!(activity.is_active(), "a starting service is active");
        // Make it look idle: its last call IDLE_AFTER ago.
        let long_ago = activity.now_millis() + IDLE_AFTER.as_millis() as u64 + 1;
        let idle = Activity {
            inner: Arc::new(Inner {
                origin: Instant::now() - Duration::from_millis(long_ago),
                last: AtomicU64::new(0),
                woken: Notify::new(),
            }),
        };
        assert!(!idle.is_active());
        let waiter = tokio::spawn({
            let idle = idle.clone();
            async move { idle.until_active().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "an idle record holds its waiters");
        idle.touch();
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("woken by the call").unwrap();
        assert!(idle.is_active());
    }
}
