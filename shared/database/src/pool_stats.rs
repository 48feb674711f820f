//! How long statements wait for a pooled connection, and how often the wait runs out: the
//! pool-use side of the monitoring the design asks for, next to the pool gauges (connections
//! idle and in use, read at each scrape by `todo_shared::server::metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::future::Future;
use std::time::Instant;

/// Seconds: a connection is usually idle in the pool (microseconds); a wait that runs out
/// takes the pool's acquire timeout or the call's deadline, a few seconds.
const BUCKETS: [f64; 12] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0];

/// The acquire-wait histogram (`db_pool_acquire_seconds`) and the count of waits that ran out
/// (`db_pool_acquire_timeouts_total`) of one pool. Clones share the series.
#[derive(Clone, Debug)]
pub struct PoolStats {
    /// Seconds from asking the pool for a connection to having one (or giving up).
    pub acquire_seconds: Histogram,
    /// Acquires that ended with `PoolTimedOut`: every connection stayed busy, or none could be
    /// opened, for the whole acquire timeout.
    pub acquire_timeouts: Counter,
}

impl PoolStats {
    /// Empty series.
    pub fn new() -> Self {
        Self { acquire_seconds: Histogram::new(BUCKETS), acquire_timeouts: Counter::default() }
    }

    /// Runs `acquire`, recording how long it took and whether it timed out.
    pub async fn time<T>(&self, acquire: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
        let started = Instant::now();
        let result = acquire.await;
        self.acquire_seconds.observe(started.elapsed().as_secs_f64());
        if matches!(result, Err(sqlx::Error::PoolTimedOut)) {
            self.acquire_timeouts.inc();
        }
        result
    }
}

impl Default for PoolStats {
    fn default() -> Self {
        Self::new()
    }
}
