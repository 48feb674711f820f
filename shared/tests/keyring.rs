//! The key ring against a real PostgreSQL: made-up `kid`s cost little (misses reload at most
//! every 250 ms, and concurrent misses share one reload), while a key registered a moment ago is
//! found by the next miss.

use localpg::test_database::TestDatabase;
use std::time::{Duration, Instant};
use todo_shared::access::keyring::{KeyLookupError, KeyRing};

#[tokio::test]
async fn made_up_kids_reload_at_most_every_250_ms_and_concurrent_misses_share_a_reload() {
    let db = TestDatabase::new().await;
    let keys = KeyRing::load(db.pool.clone().into()).await;

    // Fifty made-up kids at once: one reload serves them all.
    let started = Instant::now();
    let lookups = (0..50).map(|n| {
        let keys = keys.clone();
        tokio::spawn(async move { keys.get(&format!("made-up-{n}")).await })
    });
    for lookup in lookups.collect::<Vec<_>>() {
        assert!(matches!(lookup.await.unwrap(), Err(KeyLookupError::UnknownKid)));
    }
    let concurrent = started.elapsed();
    assert!(concurrent < Duration::from_millis(1000), "50 concurrent misses took {concurrent:?}");

    // One after another, each waits out the interval: five misses take at least a second.
    let started = Instant::now();
    for n in 0..5 {
        assert!(matches!(keys.get(&format!("another-{n}")).await, Err(KeyLookupError::UnknownKid)));
    }
    let sequential = started.elapsed();
    assert!(sequential >= Duration::from_millis(1000), "5 sequential misses took only {sequential:?}");

    // A key registered now is found by the next lookup of its kid (a miss reloads).
    sqlx::query("INSERT INTO signing_keys (kid, public_key) VALUES ('new-key', $1)")
        .bind(&[3u8; 32][..])
        .execute(&db.pool)
        .await
        .unwrap();
    keys.get("new-key").await.expect("a new key is found on the next miss");
    println!("50 concurrent misses: {concurrent:?}; 5 sequential misses: {sequential:?}");
}

#[tokio::test]
async fn a_key_retired_while_the_ring_was_not_listening_is_refused_once_the_ring_is_marked_stale() {
    // What an idle task-service does: its listener closes, nothing hears a retirement, and the
    // ring is marked stale so that the first lookup after reloads.
    let db = TestDatabase::new().await;
    sqlx::query("INSERT INTO signing_keys (kid, public_key) VALUES ('idle-key', $1)")
        .bind(&[5u8; 32][..])
        .execute(&db.pool)
        .await
        .unwrap();
    let keys = KeyRing::load(db.pool.clone().into()).await;
    keys.get("idle-key").await.expect("a registered key verifies");
    sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE kid = 'idle-key'").execute(&db.pool).await.unwrap();
    assert!(keys.is_usable("idle-key"), "unheard, the retirement is not known yet (the listener's job)");
    keys.mark_stale();
    assert!(!keys.is_usable("idle-key"), "a stale ring vouches for no cached verification");
    assert!(
        matches!(keys.get("idle-key").await, Err(KeyLookupError::UnknownKid)),
        "the lookup after reloads and finds the key retired"
    );
}
