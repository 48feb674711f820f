//! Calls per user per instance: a keyed GCRA limiter (governor), checked once a call's caller is
//! known, so that one account cannot take a server's capacity from everyone else. Past the rate,
//! a call gets RESOURCE_EXHAUSTED `QUOTA_EXCEEDED` with a QuotaFailure naming the setting and a
//! RetryInfo saying when the next call will be accepted.
//!
//! Per instance, not global: counting in the database would cost a round trip per call, and the
//! limit is there to protect each server.

use crate::env::{ConfigError, Env};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// `USER_CALLS_PER_SECOND` (default 100) and `USER_CALLS_BURST` (default 200): the steady rate
/// one user's calls may keep up on one instance, and how many may come at once after a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRateConfig {
    /// Calls per second, steadily.
    pub per_second: NonZeroU32,
    /// Calls at once; at least `per_second`.
    pub burst: NonZeroU32,
}

impl CallRateConfig {
    /// Every variable `from_env` reads, for `--help`.
    pub const SETTINGS: &[crate::env::Setting] = &[
        crate::env::Setting {
            var: "USER_CALLS_PER_SECOND",
            default: "100",
            meaning: "calls one user may keep up per second on one instance",
        },
        crate::env::Setting {
            var: "USER_CALLS_BURST",
            default: "200",
            meaning: "calls one user may make at once after a pause (at least USER_CALLS_PER_SECOND)",
        },
    ];

    /// Reads both settings; an error names the variable (not a positive whole number, or a
    /// burst below the rate).
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let positive = |var: &'static str, default: u32| -> Result<NonZeroU32, ConfigError> {
            let value: u32 = crate::env::parse_or(env, var, default, "a whole number")?;
            NonZeroU32::new(value).ok_or_else(|| ConfigError::new(var, "must be at least 1"))
        };
        let per_second = positive("USER_CALLS_PER_SECOND", 100)?;
        let burst = positive("USER_CALLS_BURST", 200)?;
        if burst < per_second {
            return Err(ConfigError::new("USER_CALLS_BURST", "must be at least USER_CALLS_PER_SECOND"));
        }
        Ok(Self { per_second, burst })
    }
}

/// The limiter of one server.
pub struct CallRate {
    config: CallRateConfig,
    limiter: DefaultKeyedRateLimiter<Uuid>,
    checks: AtomicU64,
}

/// How many checks pass between two sweeps of users whose state has returned to full burst.
const SWEEP_EVERY: u64 = 4096;

impl CallRate {
    /// A limiter with `config`'s rate and burst for every user.
    pub fn new(config: CallRateConfig) -> Self {
        let quota = Quota::per_second(config.per_second).allow_burst(config.burst);
        Self { config, limiter: DefaultKeyedRateLimiter::keyed(quota), checks: AtomicU64::new(0) }
    }

    /// The settings it enforces.
    pub fn config(&self) -> CallRateConfig {
        self.config
    }

    /// Counts a call of `user`: Ok, or how long until the user's next call will be accepted.
    pub fn check(&self, user: Uuid) -> Result<(), Duration> {
        // The map holds a state per user seen; users back at full burst carry no information.
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&user).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_gets_the_burst_then_the_rate_and_others_their_own() {
        let rate = CallRate::new(CallRateConfig {
            per_second: NonZeroU32::new(10).unwrap(),
            burst: NonZeroU32::new(20).unwrap(),
        });
        let (one, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        for _ in 0..20 {
            rate.check(one).expect("within the burst");
        }
        let wait = rate.check(one).expect_err("past the burst");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}: one call's worth at 10/s");
        rate.check(other).expect("another user has a burst of their own");
    }

    #[test]
    fn settings_are_checked() {
        let env: &[(&str, &str)] = &[];
        let defaults = CallRateConfig::from_env(&env).unwrap();
        assert_eq!((defaults.per_second.get(), defaults.burst.get()), (100, 200));
        let env: &[(&str, &str)] = &[("USER_CALLS_PER_SECOND", "0")];
        assert_eq!(CallRateConfig::from_env(&env).unwrap_err().var, "USER_CALLS_PER_SECOND");
        let env: &[(&str, &str)] = &[("USER_CALLS_PER_SECOND", "50"), ("USER_CALLS_BURST", "10")];
        assert_eq!(CallRateConfig::from_env(&env).unwrap_err().var, "USER_CALLS_BURST");
    }
}
