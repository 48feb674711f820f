//! The integrity checks of the binaries' `verify` command: that what the schema and the
//! triggers promise holds in the rows actually stored (after a restore, a hand edit or a bug).
//! Each check counts what it looked at and reports what is wrong; the binaries print them.

use crate::migrations;
use sqlx::PgConnection;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Its name as printed, e.g. `feed rows`.
    pub name: &'static str,
    /// What was looked at, e.g. `12 tasks`.
    pub checked: String,
    /// What is wrong, one line each; empty when the check passes.
    pub problems: Vec<String>,
}

impl Check {
    /// True when nothing is wrong.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs every check on `conn`, in order; a check whose query fails (a missing table) fails with
/// the error as its problem.
pub async fn run(conn: &mut PgConnection) -> Vec<Check> {
    let mut checks = Vec::new();
    checks.push(or_failed("migrations", migration_table(conn).await));
    checks.push(or_failed("constraints", constraints(conn).await));
    checks.push(or_failed(
        "feed rows",
        count_check(
            conn,
            "feed rows",
            "tasks",
            "SELECT count(*) FROM tasks",
            "SELECT count(*) FROM tasks t
             WHERE t.feed_seq IS NULL OR t.feed_created_seq IS NULL OR t.feed_created_seq > t.feed_seq
                OR NOT EXISTS (SELECT 1 FROM task_feeds f WHERE f.user_id = t.user_id)",
            "task(s) without their change numbers or their user's task_feeds row",
        )
        .await,
    ));
    checks.push(or_failed(
        "feed counters",
        count_check(
            conn,
            "feed counters",
            "changes",
            "SELECT (SELECT count(*) FROM tasks WHERE feed_seq IS NOT NULL) + (SELECT count(*) FROM task_tombstones)",
            // Each number is one change: ahead of the counter, or taken twice (a live task and a
            // tombstone, or two tasks), is wrong.
            "WITH changes AS (SELECT user_id, feed_seq AS seq FROM tasks WHERE feed_seq IS NOT NULL
                              UNION ALL SELECT user_id, seq FROM task_tombstones)
             SELECT (SELECT count(*) FROM changes c LEFT JOIN task_feeds f USING (user_id)
                     WHERE f.user_id IS NULL OR c.seq > f.seq OR f.pruned_seq > f.seq)
                  + (SELECT count(*) FROM (SELECT 1 FROM changes GROUP BY user_id, seq HAVING count(*) > 1) twice)",
            "change(s) ahead of their feed's counter, numbered twice, or with no feed",
        )
        .await,
    ));
    checks.push(or_failed(
        "session owners",
        count_check(
            conn,
            "session owners",
            "sessions",
            "SELECT count(*) FROM sessions",
            "SELECT count(*) FROM sessions s WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = s.user_id)",
            "session(s) of a user that does not exist",
        )
        .await,
    ));
    checks.push(or_failed("signing keys", signing_keys(conn).await));
    checks
}

fn or_failed(name: &'static str, outcome: Result<Check, sqlx::Error>) -> Check {
    outcome.unwrap_or_else(|e| Check { name, checked: "nothing".into(), problems: vec![format!("cannot check: {e}")] })
}

async fn count_check(
    conn: &mut PgConnection,
    name: &'static str,
    what: &str,
    total: &str,
    bad: &str,
    problem: &str,
) -> Result<Check, sqlx::Error> {
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(total)).fetch_one(&mut *conn).await?;
    let bad: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(bad)).fetch_one(&mut *conn).await?;
    Ok(Check {
        name,
        checked: format!("{total} {what}"),
        problems: if bad == 0 { Vec::new() } else { vec![format!("{bad} {problem}")] },
    })
}

async fn migration_table(conn: &mut PgConnection) -> Result<Check, sqlx::Error> {
    let lines = migrations::status(conn).await?;
    Ok(Check {
        name: "migrations",
        checked: format!("{} migrations", lines.len()),
        problems: lines
            .iter()
            .filter(|l| l.state != migrations::State::Applied)
            .map(|l| format!("{} {}: {}", l.version, l.description, l.state.label()))
            .collect(),
    })
}

/// Every foreign key and CHECK constraint of the public schema, re-checked row by row: a
/// constraint PostgreSQL marks valid can still be broken by rows written with triggers disabled
/// (`session_replication_role = replica`) or by a restore, and VALIDATE CONSTRAINT skips it.
async fn constraints(conn: &mut PgConnection) -> Result<Check, sqlx::Error> {
    // For a foreign key, the rows whose key columns are all set and match no referenced row
    // (MATCH SIMPLE); for a CHECK, the rows where its expression is false.
    let queries: Vec<(String, String)> = sqlx::query_as(
        r#"SELECT c.conname::text,
                  CASE c.contype
                  WHEN 'f' THEN format('SELECT count(*) FROM %s x WHERE %s AND NOT EXISTS (SELECT 1 FROM %s y WHERE %s)',
                      c.conrelid::regclass, 
                      (SELECT string_agg(format('x.%I IS NOT NULL', a.attname), ' AND ')
                       FROM unnest(c.conkey) k JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k),
                      c.confrelid::regclass,
                      (SELECT string_agg(format('y.%I = x.%I', fa.attname, a.attname), ' AND ')
                       FROM unnest(c.conkey, c.confkey) AS k(child, parent)
                       JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.child
                       JOIN pg_attribute fa ON fa.attrelid = c.confrelid AND fa.attnum = k.parent))
                  ELSE format('SELECT count(*) FROM %s WHERE NOT (%s)', c.conrelid::regclass,
                      pg_get_expr(c.conbin, c.conrelid))
                  END
           FROM pg_constraint c
           WHERE c.connamespace = 'public'::regnamespace AND c.contype IN ('f', 'c')
             AND c.conrelid <> 0 AND c.conrelid::regclass::text <> '_sqlx_migrations'
           ORDER BY c.conname"#,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut problems = Vec::new();
    for (name, query) in &queries {
        // The statement is built from the catalog's own names and expressions, quoted by format().
        let bad: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.as_str())).fetch_one(&mut *conn).await?;
        if bad > 0 {
            problems.push(format!("{name}: {bad} violating row(s)"));
        }
    }
    Ok(Check { name: "constraints", checked: format!("{} foreign keys and CHECKs", queries.len()), problems })
}

async fn signing_keys(conn: &mut PgConnection) -> Result<Check, sqlx::Error> {
    let (total, live): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE retired_at IS NULL OR retired_at > now()) FROM signing_keys",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(Check {
        name: "signing keys",
        checked: format!("{total} keys, {live} verifying"),
        problems: if live == 0 {
            vec!["no signing key verifies: every access token is refused until auth-service starts with a key".into()]
        } else {
            Vec::new()
        },
    })
}
