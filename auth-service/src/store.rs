//! Every SQL statement of auth-service. Functions take any executor, so a handler can run them
//! on the pool or inside its transaction; those about the caller's own account take the
//! verified `Caller`.

use crate::client_seen::ClientSeen;
use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use todo_shared::Caller;
use todo_shared::database::Tx;
use todo_shared::database::statement::{observed, observed_one};
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
pub struct Credentials {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Credentials {
    pub fn user(&self) -> UserRow {
        UserRow { id: self.id, email: self.email.clone(), created_at: self.created_at, updated_at: self.updated_at }
    }
}

/// Why a session was revoked, kept in `sessions.revoked_reason`.
#[derive(Debug, Clone, Copy)]
pub enum RevokeReason {
    Logout,
    LogoutAll,
    PasswordChanged,
    RefreshTokenReused,
    /// Past `SESSION_MAX_LIFETIME_SECONDS` or `SESSION_IDLE_TIMEOUT_SECONDS`.
    SessionExpired,
    /// Ended from another session (RevokeSession, RevokeOtherSessions).
    RevokedByUser,
    /// Ended by an operator (`auth-service sessions revoke`).
    RevokedByOperator,
}

impl RevokeReason {
    fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Logout => "logout",
            RevokeReason::LogoutAll => "logout_all",
            RevokeReason::PasswordChanged => "password_changed",
            RevokeReason::RefreshTokenReused => "refresh_token_reused",
            RevokeReason::SessionExpired => "session_expired",
            RevokeReason::RevokedByUser => "revoked_by_user",
            RevokeReason::RevokedByOperator => "revoked_by_operator",
        }
    }
}

pub async fn insert_user(db: impl PgExecutor<'_>, email: &str, password_hash: &str) -> Result<UserRow, sqlx::Error> {
    observed_one(
        "insert_user",
        sqlx::query_as(
            "INSERT INTO users (email, password_hash) VALUES ($1, $2) RETURNING id, email, created_at, updated_at",
        )
        .bind(email)
        .bind(password_hash)
        .fetch_one(db),
    )
    .await
}

pub async fn credentials_by_email(db: impl PgExecutor<'_>, email: &str) -> Result<Option<Credentials>, sqlx::Error> {
    observed(
        "credentials_by_email",
        sqlx::query_as("SELECT id, email, password_hash, created_at, updated_at FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(db),
    )
    .await
}

pub async fn credentials_of(db: impl PgExecutor<'_>, caller: &Caller) -> Result<Option<Credentials>, sqlx::Error> {
    observed(
        "credentials_of",
        sqlx::query_as("SELECT id, email, password_hash, created_at, updated_at FROM users WHERE id = $1")
            .bind(caller.user_id)
            .fetch_optional(db),
    )
    .await
}

pub async fn user_of(db: impl PgExecutor<'_>, caller: &Caller) -> Result<Option<UserRow>, sqlx::Error> {
    observed(
        "user_of",
        sqlx::query_as("SELECT id, email, created_at, updated_at FROM users WHERE id = $1")
            .bind(caller.user_id)
            .fetch_optional(db),
    )
    .await
}

pub async fn set_password_hash(
    db: impl PgExecutor<'_>,
    caller: &Caller,
    password_hash: &str,
) -> Result<(), sqlx::Error> {
    observed(
        "set_password_hash",
        sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(caller.user_id)
            .bind(password_hash)
            .execute(db),
    )
    .await?;
    Ok(())
}

/// Swaps `old_hash` for `new_hash` if it is still the stored one (a rehash at another cost).
pub async fn replace_password_hash(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    old_hash: &str,
    new_hash: &str,
) -> Result<(), sqlx::Error> {
    observed(
        "replace_password_hash",
        sqlx::query("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2")
            .bind(user_id)
            .bind(old_hash)
            .bind(new_hash)
            .execute(db),
    )
    .await?;
    Ok(())
}

/// Deletes the caller's account; sessions and tasks go by ON DELETE CASCADE.
pub async fn delete_user(db: impl PgExecutor<'_>, caller: &Caller) -> Result<bool, sqlx::Error> {
    let done = observed("delete_user", sqlx::query("DELETE FROM users WHERE id = $1").bind(caller.user_id).execute(db))
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Opens a session for `user_id`, recording the client as first and last seen.
pub async fn create_session(db: impl PgExecutor<'_>, user_id: Uuid, seen: &ClientSeen) -> Result<Uuid, sqlx::Error> {
    observed_one(
        "create_session",
        sqlx::query_scalar(
            "INSERT INTO sessions (user_id, created_user_agent, created_address, last_user_agent, last_address)
         VALUES ($1, $2, $3, $2, $3) RETURNING id",
        )
        .bind(user_id)
        .bind(seen.user_agent.as_deref())
        .bind(seen.address.map(|a| a.to_string()))
        .fetch_one(db),
    )
    .await
}

/// Records a use of the session (a refresh) by the client `seen`.
pub async fn touch_session(db: impl PgExecutor<'_>, session_id: Uuid, seen: &ClientSeen) -> Result<(), sqlx::Error> {
    observed(
        "touch_session",
        sqlx::query("UPDATE sessions SET last_used_at = now(), last_user_agent = $2, last_address = $3 WHERE id = $1")
            .bind(session_id)
            .bind(seen.user_agent.as_deref())
            .bind(seen.address.map(|a| a.to_string()))
            .execute(db),
    )
    .await?;
    Ok(())
}

/// A live session as ListSessions shows it.
#[derive(Debug, sqlx::FromRow)]
pub struct SessionRow {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub created_user_agent: Option<String>,
    pub created_address: Option<String>,
    pub last_user_agent: Option<String>,
    pub last_address: Option<String>,
}

/// The lifetimes a session is live within (`SESSION_MAX_LIFETIME_SECONDS`,
/// `SESSION_IDLE_TIMEOUT_SECONDS`): one past either is over even before a refresh revokes it.
#[derive(Debug, Clone, Copy)]
pub struct SessionLifetimes {
    pub max: std::time::Duration,
    pub idle: std::time::Duration,
}

/// The SQL condition "within its lifetimes" on a `sessions` row, with the placeholders of the
/// lifetimes' seconds (`SessionLifetimes::max`, `::idle`): written once for every statement that
/// needs it. A macro, so that each statement stays one literal.
macro_rules! within_lifetimes {
    ($max:literal, $idle:literal) => {
        concat!(
            "created_at > now() - make_interval(secs => ",
            $max,
            ") AND last_used_at > now() - make_interval(secs => ",
            $idle,
            ")"
        )
    };
}

/// The caller's sessions that are neither revoked nor past `lifetimes`, newest first.
pub async fn live_sessions_of(
    db: impl PgExecutor<'_>,
    caller: &Caller,
    lifetimes: SessionLifetimes,
) -> Result<Vec<SessionRow>, sqlx::Error> {
    observed(
        "live_sessions_of",
        sqlx::query_as(concat!(
            "SELECT id, created_at, last_used_at, created_user_agent, created_address, last_user_agent, last_address
         FROM sessions
         WHERE user_id = $1 AND revoked_at IS NULL AND ",
            within_lifetimes!("$2", "$3"),
            " ORDER BY created_at DESC, id"
        ))
        .bind(caller.user_id)
        .bind(lifetimes.max.as_secs_f64())
        .bind(lifetimes.idle.as_secs_f64())
        .fetch_all(db),
    )
    .await
}

/// Revokes the caller's session `session_id` if it is live (not revoked, within `lifetimes`);
/// false if there is no such live session of theirs.
pub async fn revoke_own_session(
    db: impl PgExecutor<'_>,
    caller: &Caller,
    session_id: Uuid,
    lifetimes: SessionLifetimes,
) -> Result<bool, sqlx::Error> {
    let done = observed(
        "revoke_own_session",
        sqlx::query(concat!(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = $3
         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND ",
            within_lifetimes!("$4", "$5")
        ))
        .bind(session_id)
        .bind(caller.user_id)
        .bind(RevokeReason::RevokedByUser.as_str())
        .bind(lifetimes.max.as_secs_f64())
        .bind(lifetimes.idle.as_secs_f64())
        .execute(db),
    )
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes every session of the caller but the calling one that is not revoked yet (those past
/// their lifetimes too, though they are not counted); returns how many live ones ended.
pub async fn revoke_other_sessions(
    db: impl PgExecutor<'_>,
    caller: &Caller,
    lifetimes: SessionLifetimes,
) -> Result<u64, sqlx::Error> {
    let ended: i64 = observed_one(
        "revoke_other_sessions",
        sqlx::query_scalar(concat!(
            "WITH ended AS (
             UPDATE sessions SET revoked_at = now(), revoked_reason = $3
             WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL
             RETURNING created_at, last_used_at)
         SELECT count(*) FROM ended WHERE ",
            within_lifetimes!("$4", "$5")
        ))
        .bind(caller.user_id)
        .bind(caller.session_id)
        .bind(RevokeReason::RevokedByUser.as_str())
        .bind(lifetimes.max.as_secs_f64())
        .bind(lifetimes.idle.as_secs_f64())
        .fetch_one(db),
    )
    .await?;
    Ok(u64::try_from(ended).unwrap_or_default())
}

pub async fn insert_refresh_token(
    db: impl PgExecutor<'_>,
    session_id: Uuid,
    hash: &[u8; 32],
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    observed(
        "insert_refresh_token",
        sqlx::query("INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)")
            .bind(&hash[..])
            .bind(session_id)
            .bind(expires_at)
            .execute(db),
    )
    .await?;
    Ok(())
}

/// A refresh token with its session, locked until the transaction ends so that concurrent
/// refreshes of one token are decided one after the other.
#[derive(sqlx::FromRow)]
pub struct RefreshTokenState {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub spent_at: Option<DateTime<Utc>>,
    pub grace_exchanges: i32,
    pub session_revoked: bool,
    /// When the session was opened (its login or sign-up).
    pub session_created_at: DateTime<Utc>,
    /// When this token was issued: the session's last use.
    pub issued_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

/// The account's password hash now, share-locked until `tx` ends: a password change in flight
/// commits first, and none can commit before `tx` does. None if the account is gone.
pub async fn lock_password_hash(tx: &mut Tx, user_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    observed(
        "lock_password_hash",
        sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1 FOR SHARE")
            .bind(user_id)
            .fetch_optional(&mut *tx),
    )
    .await
}

pub async fn lock_refresh_token(tx: &mut Tx, hash: &[u8; 32]) -> Result<Option<RefreshTokenState>, sqlx::Error> {
    observed(
        "lock_refresh_token",
        sqlx::query_as(
            "SELECT r.session_id, s.user_id, r.expires_at, r.spent_at, r.grace_exchanges,
                s.revoked_at IS NOT NULL AS session_revoked,
                s.created_at AS session_created_at, r.created_at AS issued_at,
                now() AS now
         FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id
         WHERE r.token_hash = $1
         FOR UPDATE OF r",
        )
        .bind(&hash[..])
        .fetch_optional(&mut *tx),
    )
    .await
}

pub async fn spend_refresh_token(db: impl PgExecutor<'_>, hash: &[u8; 32]) -> Result<(), sqlx::Error> {
    observed(
        "spend_refresh_token",
        sqlx::query("UPDATE refresh_tokens SET spent_at = now() WHERE token_hash = $1 AND spent_at IS NULL")
            .bind(&hash[..])
            .execute(db),
    )
    .await?;
    Ok(())
}

pub async fn count_grace_exchange(db: impl PgExecutor<'_>, hash: &[u8; 32]) -> Result<(), sqlx::Error> {
    observed(
        "count_grace_exchange",
        sqlx::query("UPDATE refresh_tokens SET grace_exchanges = grace_exchanges + 1 WHERE token_hash = $1")
            .bind(&hash[..])
            .execute(db),
    )
    .await?;
    Ok(())
}

pub async fn revoke_session(
    db: impl PgExecutor<'_>,
    session_id: Uuid,
    reason: RevokeReason,
) -> Result<bool, sqlx::Error> {
    let done = observed(
        "revoke_session",
        sqlx::query("UPDATE sessions SET revoked_at = now(), revoked_reason = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(session_id)
            .bind(reason.as_str())
            .execute(db),
    )
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The account `email` (canonical, as `domain::Email` makes it) is known by, if any.
pub async fn user_id_by_email(db: impl PgExecutor<'_>, email: &str) -> Result<Option<Uuid>, sqlx::Error> {
    observed(
        "user_id_by_email",
        sqlx::query_scalar("SELECT id FROM users WHERE email = $1").bind(email).fetch_optional(db),
    )
    .await
}

/// A session of an account as an operator sees it (`auth-service sessions list`), revoked or not.
#[derive(Debug, sqlx::FromRow)]
pub struct AdminSessionRow {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub last_user_agent: Option<String>,
    pub last_address: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
}

/// Every session of `user_id`, revoked or not, newest first.
pub async fn all_sessions_of(db: impl PgExecutor<'_>, user_id: Uuid) -> Result<Vec<AdminSessionRow>, sqlx::Error> {
    observed(
        "all_sessions_of",
        sqlx::query_as(
            "SELECT id, created_at, last_used_at, last_user_agent, last_address, revoked_at, revoked_reason
         FROM sessions WHERE user_id = $1 ORDER BY created_at DESC, id",
        )
        .bind(user_id)
        .fetch_all(db),
    )
    .await
}

/// Revokes the session a refresh token belongs to, spent or not. Unknown tokens do nothing.
pub async fn revoke_session_of_refresh_token(db: impl PgExecutor<'_>, hash: &[u8; 32]) -> Result<(), sqlx::Error> {
    observed(
        "revoke_session_of_refresh_token",
        sqlx::query(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = 'logout'
         WHERE id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $1) AND revoked_at IS NULL",
        )
        .bind(&hash[..])
        .execute(db),
    )
    .await?;
    Ok(())
}

/// Revokes every live session of the caller; returns how many.
pub async fn revoke_sessions_of(
    db: impl PgExecutor<'_>,
    caller: &Caller,
    reason: RevokeReason,
) -> Result<u64, sqlx::Error> {
    let done = observed(
        "revoke_sessions_of",
        sqlx::query(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(caller.user_id)
        .bind(reason.as_str())
        .execute(db),
    )
    .await?;
    Ok(done.rows_affected())
}

/// Whether a verified access token still counts, asked of the database in one round trip.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct TokenStanding {
    /// The caller's session exists and is not revoked.
    pub session_live: bool,
    /// The key that signed the token is registered and not retired (or retired only later).
    pub key_live: bool,
}

/// The standing of `caller`'s session and of the key `kid` that signed its token. auth-service
/// asks on every authenticated call: its key ring hears of no retirement (it runs no listener),
/// and this way a session revoked or a key retired anywhere counts at once.
pub async fn token_standing(db: impl PgExecutor<'_>, caller: &Caller, kid: &str) -> Result<TokenStanding, sqlx::Error> {
    observed_one("token_standing", sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL) AS session_live,
                EXISTS (SELECT 1 FROM signing_keys WHERE kid = $3 AND (retired_at IS NULL OR retired_at > now()))
                    AS key_live",
    )
    .bind(caller.session_id)
    .bind(caller.user_id)
    .bind(kid)
    .fetch_one(db))
    .await
}

/// Counts an attempt for each key before the password is checked, so that concurrent guesses
/// cannot all pass a check made before any of them failed. Returns the seconds until the
/// longest-blocked key's window ends if any key is now over its limit.
pub async fn throttle_attempt(
    db: impl PgExecutor<'_>,
    keys: &[String],
    limits: &[i32],
    window: std::time::Duration,
) -> Result<Option<f64>, sqlx::Error> {
    observed_one(
        "throttle_attempt",
        sqlx::query_scalar(
            "WITH counted AS (
             INSERT INTO login_throttle (key, window_start, failures) SELECT unnest($1::text[]), now(), 1
             ON CONFLICT (key) DO UPDATE SET
                 failures = CASE WHEN login_throttle.window_start > now() - make_interval(secs => $3)
                                 THEN login_throttle.failures + 1 ELSE 1 END,
                 window_start = CASE WHEN login_throttle.window_start > now() - make_interval(secs => $3)
                                     THEN login_throttle.window_start ELSE now() END
             RETURNING key, failures, window_start
         )
         SELECT max(EXTRACT(EPOCH FROM c.window_start + make_interval(secs => $3) - now()))::float8
         FROM counted c JOIN unnest($1::text[], $2::int[]) AS l(key, max_attempts) ON l.key = c.key
         WHERE c.failures > l.max_attempts",
        )
        .bind(keys)
        .bind(limits)
        .bind(window.as_secs_f64())
        .fetch_one(db),
    )
    .await
}

/// After a correct password: the account starts afresh, and the attempt no longer counts
/// against the address.
pub async fn throttle_forgive(
    db: impl PgExecutor<'_>,
    account: &str,
    address: Option<&str>,
) -> Result<(), sqlx::Error> {
    observed(
        "throttle_forgive",
        sqlx::query(
            "WITH gone AS (DELETE FROM login_throttle WHERE key = $1 OR (key = $2 AND failures <= 1))
         UPDATE login_throttle SET failures = failures - 1 WHERE key = $2 AND failures > 1",
        )
        .bind(account)
        .bind(address)
        .execute(db),
    )
    .await?;
    Ok(())
}

pub async fn throttle_prune(db: impl PgExecutor<'_>, window: std::time::Duration) -> Result<(), sqlx::Error> {
    observed(
        "throttle_prune",
        sqlx::query("DELETE FROM login_throttle WHERE window_start < now() - make_interval(secs => $1)")
            .bind(window.as_secs_f64())
            .execute(db),
    )
    .await?;
    Ok(())
}

/// Deletes refresh tokens expired for a day, sessions revoked longer ago than `keep_revoked`, and
/// sessions none of whose refresh tokens is still valid (they can never be refreshed again, and
/// their last access token expired long before their last refresh token did).
pub async fn prune_sessions(db: impl PgExecutor<'_>, keep_revoked: std::time::Duration) -> Result<(), sqlx::Error> {
    observed(
        "prune_sessions",
        sqlx::query(
            "WITH expired AS (
             DELETE FROM refresh_tokens WHERE expires_at < now() - interval '1 day'
         ), forgotten AS (
             DELETE FROM session_deletions WHERE deleted_at < now() - make_interval(secs => $1)
         )
         DELETE FROM sessions s
         WHERE s.revoked_at < now() - make_interval(secs => $1)
            OR (s.created_at < now() - interval '1 day'
                AND NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.session_id = s.id AND r.expires_at > now()))",
        )
        .bind(keep_revoked.as_secs_f64())
        .execute(db),
    )
    .await?;
    Ok(())
}
