//! Brute-force throttling of password checks, per account and per client address.
//!
//! Counts live in the database (`login_throttle`), so several auth-service instances share them.
//! A fixed window per key: each attempt is counted before the password is checked (so that
//! concurrent guesses cannot slip past a check made before any of them failed), a correct password
//! takes its attempt back; past `max` attempts within the window, further ones are refused until
//! it ends, with a RetryInfo saying when. The per-address limit is far above the per-account one: a
//! whole office may sit behind one address, while one account's attacker never locks another
//! account. A success clears the account's count.

use crate::store;
use std::net::IpAddr;
use std::time::Duration;
use todo_shared::database::Db;

#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    pub max_failures_per_account: i32,
    pub max_failures_per_address: i32,
    /// SignUps per client address per window, successful or not (`SIGNUP_MAX_PER_ADDRESS`):
    /// bounds account creation and the probing of addresses by EMAIL_TAKEN.
    pub max_sign_ups_per_address: i32,
    pub window: Duration,
}

#[derive(Clone)]
pub struct LoginThrottle {
    pool: Db,
    config: ThrottleConfig,
}

/// The counters one attempt touches.
pub struct AttemptKeys {
    account: String,
    address: Option<String>,
}

impl AttemptKeys {
    /// `email` as normalised for lookup; IPv6 clients are counted by their /64, which is what
    /// one subscriber usually holds. An IPv4 client reaching a dual-stack listener (`[::]`)
    /// arrives as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2): it is counted
    /// by its IPv4 address, not with every other IPv4 client in `::/64`.
    pub fn new(email: &str, address: Option<IpAddr>) -> Self {
        Self { account: format!("account:{email}"), address: address.map(|ip| format!("address:{}", client_of(ip))) }
    }

    /// The client these attempts come from, as `client_key` names it.
    pub fn client(&self) -> &str {
        self.address.as_deref().unwrap_or_default()
    }
}

/// The client an address stands for, as a key (`address:203.0.113.7`, `address:2001:db8:0:1::/64`;
/// "" when the address is unknown): what the throttle counts by and bcrypt's queue shares by.
pub fn client_key(address: Option<IpAddr>) -> String {
    address.map(|ip| format!("address:{}", client_of(ip))).unwrap_or_default()
}

/// Whom an address stands for: an IPv4 address, or an IPv6 /64.
fn client_of(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

impl LoginThrottle {
    pub fn new(pool: Db, config: ThrottleConfig) -> Self {
        Self { pool, config }
    }

    fn keys_and_limits(&self, keys: &AttemptKeys) -> (Vec<String>, Vec<i32>) {
        let mut names = vec![keys.account.clone()];
        let mut limits = vec![self.config.max_failures_per_account];
        if let Some(address) = &keys.address {
            names.push(address.clone());
            limits.push(self.config.max_failures_per_address);
        }
        (names, limits)
    }

    /// Counts this attempt; if that puts a key over its limit, how long until it may try again.
    pub async fn attempt(&self, keys: &AttemptKeys) -> Result<Option<Duration>, sqlx::Error> {
        let (names, limits) = self.keys_and_limits(keys);
        let seconds = store::throttle_attempt(&self.pool, &names, &limits, self.config.window).await?;
        Ok(seconds.map(|s| Duration::from_secs_f64(s.max(1.0))))
    }

    /// Counts a SignUp from `address`; if that puts it over `max_sign_ups_per_address`, how long
    /// until it may sign up again. Without an address (not over TCP) nothing is counted.
    pub async fn sign_up_attempt(&self, address: Option<IpAddr>) -> Result<Option<Duration>, sqlx::Error> {
        let Some(ip) = address else { return Ok(None) };
        let key = [format!("sign_up:{}", client_of(ip))];
        let seconds =
            store::throttle_attempt(&self.pool, &key, &[self.config.max_sign_ups_per_address], self.config.window)
                .await?;
        Ok(seconds.map(|s| Duration::from_secs_f64(s.max(1.0))))
    }

    /// The password was right: the account's count is cleared and the address's attempt undone.
    pub async fn succeeded(&self, keys: &AttemptKeys) -> Result<(), sqlx::Error> {
        store::throttle_forgive(&self.pool, &keys.account, keys.address.as_deref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address_key(ip: &str) -> Option<String> {
        AttemptKeys::new("a@example.com", Some(ip.parse().expect("a test address"))).address
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_ipv4_by_their_address() {
        // One subscriber's /64: any interface id, the same counter.
        let one = address_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd");
        assert_eq!(one.as_deref(), Some("address:2001:db8:1:2::/64"));
        assert_eq!(address_key("2001:db8:1:2::1"), one);
        // The next /64 is someone else.
        assert_ne!(address_key("2001:db8:1:3::1"), one);
        assert_eq!(address_key("192.0.2.7").as_deref(), Some("address:192.0.2.7"));
        assert_ne!(address_key("192.0.2.8"), address_key("192.0.2.7"));
        assert_eq!(AttemptKeys::new("a@example.com", None).address, None);
        // IPv4 clients of a dual-stack listener: each by its own IPv4 address.
        assert_eq!(address_key("::ffff:192.0.2.7").as_deref(), Some("address:192.0.2.7"));
        assert_ne!(address_key("::ffff:192.0.2.8"), address_key("::ffff:192.0.2.7"));
    }
}
