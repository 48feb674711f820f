//! Reading settings from the environment, once, at start: the parsing every part of the crate
//! shares. A bad value is reported as one line naming the variable and what is wrong with it.
//! The typed settings live with what they configure: `database::DbConfig`,
//! `access::TokenConfig`, `server::EndpointConfig`.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// A setting that could not be read; its `Display` is the one line the binaries print.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    /// The environment variable, e.g. `DB_MAX_CONNECTIONS`.
    pub var: &'static str,
    /// What is wrong with its value, in words an operator can act on.
    pub problem: String,
}

impl ConfigError {
    /// An error about `var`.
    pub fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self { var, problem: problem.into() }
    }
}

/// Where the environment comes from: the process, or a fixed list in tests.
pub trait Env {
    /// The value of `var`, if set.
    fn get(&self, var: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok()
    }
}

impl Env for &[(&str, &str)] {
    fn get(&self, var: &str) -> Option<String> {
        self.iter().find(|(k, _)| *k == var).map(|(_, v)| v.to_string())
    }
}

/// Reads `var`, treating an empty value as unset.
pub fn optional(env: &dyn Env, var: &str) -> Option<String> {
    env.get(var).map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// Reads and parses `var`, or returns `default` when it is unset.
pub fn parse_or<T: FromStr>(env: &dyn Env, var: &'static str, default: T, expected: &str) -> Result<T, ConfigError> {
    match optional(env, var) {
        None => Ok(default),
        Some(raw) => raw.parse().map_err(|_| ConfigError::new(var, format!("expected {expected}, got {raw:?}"))),
    }
}

/// `var` as an `ip:port` address, or `default` when unset; an error naming `var` otherwise.
pub fn socket_addr(env: &dyn Env, var: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
    let expected = format!("an address such as {default}");
    parse_or(env, var, default.parse().expect("default addresses are valid"), &expected)
}

/// `var` as `true`/`false` (also `1`/`0`, `yes`/`no`), or `default` when unset.
pub fn boolean(env: &dyn Env, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match optional(env, var).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
        Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
        Some(v) => Err(ConfigError::new(var, format!("expected true or false, got {v:?}"))),
    }
}

/// A whole number of `unit`s (as named in the error: "tasks", "connections") within `range`.
pub fn whole(
    env: &dyn Env,
    var: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
) -> Result<u64, ConfigError> {
    let value: u64 = parse_or(env, var, default, &format!("a whole number of {unit}"))?;
    if !range.contains(&value) {
        return Err(ConfigError::new(
            var,
            format!("must be from {} to {} {unit}, got {value}", range.start(), range.end()),
        ));
    }
    Ok(value)
}

/// A whole number of seconds within `range`.
pub fn seconds(
    env: &dyn Env,
    var: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    whole(env, var, default, range, "seconds").map(Duration::from_secs)
}

/// One setting a binary reads, as its `--help` lists it: each parser keeps the list of the
/// variables it reads next to it, and each binary's list is theirs put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The environment variable, e.g. `DB_MAX_CONNECTIONS`.
    pub var: &'static str,
    /// Its default in words, e.g. `10`, or `(required)`, or `(unset: no metrics listener)`.
    pub default: &'static str,
    /// What it sets, in one sentence.
    pub meaning: &'static str,
}

/// An environment of fixed `values` that remembers every variable asked of it: for tests that a
/// settings list names exactly what a parser reads.
pub struct Recording<'a> {
    values: &'a [(&'a str, &'a str)],
    asked: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl<'a> Recording<'a> {
    /// An environment holding `values` and nothing else.
    pub fn new(values: &'a [(&'a str, &'a str)]) -> Self {
        Self { values, asked: Default::default() }
    }

    /// Every variable asked for so far, set or not, sorted.
    pub fn asked(&self) -> std::collections::BTreeSet<String> {
        self.asked.lock().expect("not poisoned").clone()
    }
}

impl Env for Recording<'_> {
    fn get(&self, var: &str) -> Option<String> {
        self.asked.lock().expect("not poisoned").insert(var.to_owned());
        Env::get(&self.values, var)
    }
}
