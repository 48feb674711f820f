//! The load loop: `concurrency` callers, each issuing one call after another over a few shared
//! HTTP/2 connections, for a warm-up and then a measured period. Every error is counted.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a scenario's load runs.
#[derive(Clone, Copy)]
pub struct Timing {
    /// Calls made first and not measured (connections, caches and plans warm up).
    pub warmup: Duration,
    /// The measured period that follows.
    pub measure: Duration,
}

/// What one load measured.
pub struct LoadResult {
    /// Calls in the measured period (errors included).
    pub requests: u64,
    /// Every call made, warm-up included: each had finished when `run` returned (what
    /// pg_stat_statements saw between a reset before `run` and a read after it).
    pub calls: u64,
    /// Failed calls in the measured period.
    pub errors: u64,
    /// Length of the measured period, in seconds (until the last measured call ended).
    pub seconds: f64,
    /// Latencies of the measured calls, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// The first failure of the measured period, described.
    pub first_error: Option<String>,
    /// CPU seconds by process group at the start and the end of the measured period.
    pub cpu: (CpuSnapshot, CpuSnapshot),
}

/// CPU seconds used so far, by process group (`cpu::snapshot`).
pub type CpuSnapshot = std::collections::BTreeMap<&'static str, f64>;
/// Takes a [`CpuSnapshot`]; called at the start and the end of the measured period.
pub type CpuProbe = Arc<dyn Fn() -> CpuSnapshot + Send + Sync>;

impl LoadResult {
    /// Measured calls per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// The latency at quantile `p` (0.5, 0.99) of the successful measured calls, in ms.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() as f64 * p).ceil() as usize).clamp(1, self.latencies_us.len()) - 1;
        (self.latencies_us[i] as f64 / 10.0).round() / 100.0
    }

    /// Milliseconds of CPU that process group `group` used per measured call (NaN without it).
    pub fn cpu_ms_per_call(&self, group: &str) -> f64 {
        let (before, after) = &self.cpu;
        match (before.get(group), after.get(group)) {
            (Some(b), Some(a)) => (a - b) * 1000.0 / self.requests.max(1) as f64,
            _ => f64::NAN,
        }
    }
}

/// Runs `call(worker, iteration)` from `concurrency` workers. A call returns Err with a short
/// description on any failure.
pub async fn run<F, Fut>(concurrency: usize, timing: Timing, probe: CpuProbe, call: F) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let measure_from = start + timing.warmup;
    let end = measure_from + timing.measure;
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut errors, mut first_error) = (0u64, None);
            let mut iteration = 0u64;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let outcome = call(worker, iteration).await;
                iteration += 1;
                if began < measure_from {
                    continue;
                }
                match outcome {
                    Ok(()) => latencies.push(began.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (latencies, errors, first_error, iteration)
        }));
    }
    let probe_start = probe.clone();
    let cpu_start = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        probe_start()
    });
    let cpu_end = {
        let probe = probe.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(end.into()).await;
            probe()
        })
    };
    let mut result = LoadResult {
        requests: 0,
        calls: 0,
        errors: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
        first_error: None,
        cpu: Default::default(),
    };
    for worker in workers {
        let (latencies, errors, first_error, calls) = worker.await.expect("load workers do not panic");
        result.calls += calls;
        result.latencies_us.extend(latencies);
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.cpu = (cpu_start.await.expect("the probe does not panic"), cpu_end.await.expect("the probe does not panic"));
    result.seconds = (Instant::now().min(end + Duration::from_secs(60)) - measure_from).as_secs_f64();
    result.requests = result.latencies_us.len() as u64 + result.errors;
    result.latencies_us.sort_unstable();
    result
}
