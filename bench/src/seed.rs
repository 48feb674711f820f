//! Data for the scenarios, written by SQL so that seeding a million rows takes seconds.
//!
//! User n has the id `00000000-0000-4000-8000-<n as 12 hex digits>` and, in the small data set,
//! the tasks with ids (n-1)*200+1 ..= n*200; pgbench's scripts compute the same values, so both
//! sides run the same statements on the same rows.

use sqlx::PgPool;

pub const TASKS_PER_USER: i64 = 200;
/// The user of the deep-page scenario.
pub const DEEP_USER: i64 = 900_000;
pub const DEEP_TASKS: i64 = 20_000;
pub const PASSWORD: &str = "bench password";

/// The id of user n, in SQL, for pgbench scripts and seeding.
pub fn user_id_sql(n: &str) -> String {
    format!("('00000000-0000-4000-8000-' || lpad(to_hex(CAST({n} AS bigint)), 12, '0'))::uuid")
}

pub fn email(n: i64) -> String {
    format!("user{n}@bench.example")
}

/// Users first..=last, all with the same bcrypt hash of PASSWORD.
pub async fn users(pool: &PgPool, first: i64, last: i64, hash: &str) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO users (id, email, password_hash)
         SELECT {}, 'user' || g || '@bench.example', $3 FROM generate_series($1::bigint, $2::bigint) g",
        user_id_sql("g")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(first).bind(last).bind(hash).execute(pool).await?;
    Ok(())
}

/// `per_user` tasks for each of users first..=last, ids starting after `id_base`.
pub async fn tasks(pool: &PgPool, first: i64, last: i64, per_user: i64, id_base: i64) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO tasks (id, user_id, title, completed, created_at, updated_at)
         SELECT $4 + (g - $1) * $3 + t, {}, 'task ' || t, t % 3 = 0, at, at
         FROM generate_series($1::bigint, $2::bigint) g CROSS JOIN generate_series(1::bigint, $3::bigint) t
         -- Distinct times, one task a minute per user, as a real history has (equal times would
         -- make every ORDER BY fall back to the id).
         CROSS JOIN LATERAL (SELECT now() - t * interval '1 minute' - g * interval '1 millisecond' AS at) times",
        user_id_sql("g")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(first).bind(last).bind(per_user).bind(id_base).execute(pool).await?;
    sqlx::query("SELECT setval('tasks_id_seq', (SELECT max(id) FROM tasks))").execute(pool).await?;
    Ok(())
}

pub async fn analyze(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    Ok(())
}
