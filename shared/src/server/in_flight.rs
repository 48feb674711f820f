//! Counting what is open: the calls a server is answering (reported when the drain time runs
//! out) and task-service's open streams (which a stop waits for, briefly, to end cleanly).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The calls (and streams) being answered now, so a graceful stop can wait for them.
#[derive(Clone, Default)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    changed: Arc<tokio::sync::Notify>,
}

impl InFlight {
    /// How many are in flight now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once no call is being answered (checked at least every 50 ms).
    pub async fn idle(&self) {
        while self.current() > 0 {
            let _ = tokio::time::timeout(Duration::from_millis(50), self.changed.notified()).await;
        }
    }

    /// Counts a call until the returned guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }
}

/// One call in flight, until dropped.
pub struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}
