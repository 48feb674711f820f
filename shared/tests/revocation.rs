//! The revocation list's fail-safe path against a real database: while no listener keeps the
//! list current, every check asks the database, and a missing session counts as revoked.

use localpg::test_database::TestDatabase;
use std::time::Duration;
use todo_shared::access::revocation::Revocations;
use todo_shared::access::token::TokenError;
use uuid::Uuid;

#[tokio::test]
async fn without_a_listener_sessions_are_checked_in_the_database() {
    let db = TestDatabase::new().await;
    let user: Uuid =
        sqlx::query_scalar("INSERT INTO users (email, password_hash) VALUES ('a@example.com', 'x') RETURNING id")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let live: Uuid = sqlx::query_scalar("INSERT INTO sessions (user_id) VALUES ($1) RETURNING id")
        .bind(user)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let revoked: Uuid = sqlx::query_scalar(
        "INSERT INTO sessions (user_id, revoked_at, revoked_reason) VALUES ($1, now(), 'logout') RETURNING id",
    )
    .bind(user)
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let revocations = Revocations::new(db.pool.clone().into(), Duration::from_secs(3600));
    assert!(!revocations.is_live());
    revocations.check(live, user).await.unwrap();
    assert!(matches!(revocations.check(revoked, user).await, Err(TokenError::Revoked)));
    assert!(matches!(revocations.check(Uuid::new_v4(), user).await, Err(TokenError::Revoked)), "missing = revoked");
    assert!(
        matches!(revocations.check(live, Uuid::new_v4()).await, Err(TokenError::Revoked)),
        "another user's session"
    );

    // With the database gone, the check refuses (UNAVAILABLE) rather than trust anything.
    db.pool.close().await;
    assert!(matches!(revocations.check(live, user).await, Err(TokenError::Database(_))));
}
