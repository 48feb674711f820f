//! Statements per call, from pg_stat_statements: how many statements (SET, BEGIN and COMMIT
//! included: `track_utility` is on) PostgreSQL ran for each gRPC call of a scenario, and which.
//! A call that is one round trip shows one statement per call.

use crate::load::LoadResult;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::BTreeMap;

/// The server settings the bench's PostgreSQL starts with so that pg_stat_statements counts
/// every top-level statement (a trigger's statements are not top-level, so not counted).
pub fn server_settings() -> Vec<(String, String)> {
    [
        ("shared_preload_libraries", "pg_stat_statements"),
        ("pg_stat_statements.track", "top"),
        ("pg_stat_statements.track_utility", "on"),
        // Room for every distinct statement of a scenario, so none is evicted before it is read.
        ("pg_stat_statements.max", "10000"),
    ]
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .to_vec()
}

/// Creates the extension in the database `pool` is on (the one the services use).
pub async fn install(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(pool).await?;
    Ok(())
}

/// Forgets every statement counted so far (before a scenario's load, warm-up included).
pub async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_stat_statements_reset()").execute(pool).await?;
    Ok(())
}

/// Runs a scenario's `load` between a [`reset`] and a [`per_call`] read, returning its result
/// with the statements per call of all its calls (warm-up included).
pub async fn around(pool: &PgPool, load: impl Future<Output = LoadResult>) -> anyhow::Result<(LoadResult, Value)> {
    reset(pool).await?;
    let result = load.await;
    let statements = per_call(pool, result.calls).await?;
    Ok((result, statements))
}

/// Statements counted since the last [`reset`], per call of the `calls` made since then:
/// `statements_per_call` (all statements but the bench's own, which name pg_stat_statements, over
/// `calls`) and `statements`, the most frequent ones as `[query, per call]` pairs, most frequent
/// first, the query's text cut to 140 characters (past a task query's column list) and its
/// literal numbers shown as `N` (PostgreSQL 15 does not normalise SET's value, so each deadline
/// would be a statement of its own).
/// Background work of the services (the feed poll, key refresh) counts too, which is why a
/// statement may show a small fraction per call. `statements_evicted` appears only if
/// pg_stat_statements had to drop entries, which makes the counts too low.
pub async fn per_call(pool: &PgPool, calls: u64) -> anyhow::Result<Value> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT query, calls FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'")
            .fetch_all(pool)
            .await?;
    let evicted: i64 = sqlx::query_scalar("SELECT dealloc FROM pg_stat_statements_info").fetch_one(pool).await?;
    let mut by_text: BTreeMap<String, i64> = BTreeMap::new();
    for (query, count) in rows {
        *by_text.entry(shape(&query)).or_default() += count;
    }
    let calls = calls.max(1) as f64;
    let total: i64 = by_text.values().sum();
    let mut top: Vec<(String, i64)> = by_text.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let statements: Vec<Value> =
        top.into_iter().take(6).map(|(query, count)| json!([query, round3(count as f64 / calls)])).collect();
    let mut out = json!({"statements_per_call": round3(total as f64 / calls), "statements": statements});
    if evicted > 0 {
        out["statements_evicted"] = json!(evicted);
    }
    Ok(out)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A statement's text as one line of at most 140 characters, literal numbers as `N` (`$1` stays).
fn shape(query: &str) -> String {
    let line = query.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut previous: Option<char> = None;
    while let Some(c) = chars.next() {
        // A digit right after `$`, a letter, a digit or `_` belongs to a parameter or a name.
        let part_of_name = previous.is_some_and(|p| p == '$' || p == '_' || p.is_alphanumeric());
        if c.is_ascii_digit() && !part_of_name {
            while chars.next_if(char::is_ascii_digit).is_some() {}
            out.push('N');
            previous = Some('N');
        } else {
            out.push(c);
            previous = Some(c);
        }
    }
    match out.char_indices().nth(140) {
        Some((at, _)) => format!("{}...", &out[..at]),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::shape;

    #[test]
    fn a_statement_shape_hides_literal_numbers_and_keeps_parameters() {
        assert_eq!(shape("SET statement_timeout = 29987"), "SET statement_timeout = N");
        assert_eq!(
            shape("SELECT id FROM tasks\n   WHERE id = $1 AND user_id = $12"),
            "SELECT id FROM tasks WHERE id = $1 AND user_id = $12"
        );
        assert_eq!(shape("SELECT xmin::text::bigint, 0.5, t2 FROM t2"), "SELECT xmin::text::bigint, N.N, t2 FROM t2");
        assert_eq!(shape(&"x".repeat(200)), format!("{}...", "x".repeat(140)));
    }
}
