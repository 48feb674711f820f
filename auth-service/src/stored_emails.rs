//! Brings email addresses stored before they were canonical (NFKC, lower case, IDNA ASCII domain;
//! see `domain::Email`) to their canonical form, once, at start. Only addresses with non-ASCII
//! characters can differ (ASCII ones were lower-cased at sign-up already), so the scan reads
//! those alone. Two accounts that turn out to share an address are both left as they are and
//! recorded in `email_conflicts` for an operator: merging or deleting accounts is never
//! automatic; the one left in its old form cannot log in by its address (login looks up the
//! canonical form, which is the other account's) until an operator resolves the conflict. Safe
//! with several instances starting at once: each row is updated on its own, and a unique
//! violation (another instance, or a real conflict) is looked at again.

use crate::domain::Email;
use todo_shared::database::Db;
use uuid::Uuid;

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Normalised {
    /// Addresses rewritten to their canonical form.
    pub rewritten: u64,
    /// Accounts left as they are because another account holds their canonical address.
    pub conflicts: u64,
}

/// Rewrites every stored address that is not canonical, recording conflicts.
pub async fn normalise(pool: &Db) -> Result<Normalised, sqlx::Error> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as(r"SELECT id, email FROM users WHERE email ~ '[^\x01-\x7f]'").fetch_all(pool).await?;
    let mut done = Normalised::default();
    for (id, email) in rows {
        // An address whose canonical form is not a valid one (longer than 255 characters once
        // normalised, a domain IDNA refuses) stays as it is: the account keeps its address.
        let Ok(canonical) = Email::parse("email", &email) else {
            tracing::warn!(user_id = %id, "a stored email address has no valid canonical form; left as it is");
            continue;
        };
        let canonical = canonical.as_str().to_owned();
        if canonical == email {
            continue;
        }
        let rewritten = sqlx::query("UPDATE users SET email = $2 WHERE id = $1 AND email = $3")
            .bind(id)
            .bind(&canonical)
            .bind(&email)
            .execute(pool)
            .await;
        match rewritten {
            Ok(r) => done.rewritten += r.rows_affected(),
            Err(e) if todo_shared::database::violated_constraint(&e).is_some() => {
                let other: Option<Uuid> =
                    sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1) AND id <> $2")
                        .bind(&canonical)
                        .bind(id)
                        .fetch_optional(pool)
                        .await?;
                let Some(other) = other else { continue };
                sqlx::query(
                    "INSERT INTO email_conflicts (user_id, canonical_email, other_user_id) VALUES ($1, $2, $3)
                     ON CONFLICT (user_id) DO NOTHING",
                )
                .bind(id)
                .bind(&canonical)
                .bind(other)
                .execute(pool)
                .await?;
                // Ids only: addresses are personal data.
                tracing::warn!(
                    user_id = %id,
                    other_user_id = %other,
                    "two accounts have the same email address once normalised; both are left as they are (see email_conflicts)"
                );
                done.conflicts += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
