//! A freshly migrated database per test, on one server per test process: the private server
//! when DATABASE_URL is unset, else the server DATABASE_URL names.

use crate::pgbouncer::PgBouncer;
use crate::{Durability, PrivatePostgres, find_binaries};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Executor};
use std::sync::OnceLock;

enum Server {
    Private(#[allow(dead_code)] PrivatePostgres, String),
    External(String),
    /// The private server behind a PgBouncer (`TEST_VIA_PGBOUNCER`).
    Pooled(#[allow(dead_code)] PrivatePostgres, String, PgBouncer),
}

impl Server {
    fn admin_url(&self) -> &str {
        match self {
            Server::Private(_, url) | Server::External(url) | Server::Pooled(_, url, _) => url,
        }
    }
}

/// The PgBouncer pool mode the suites run through (`TEST_VIA_PGBOUNCER=transaction`, or `1`
/// for the same; `session`), or None to run straight against PostgreSQL.
pub fn via_pgbouncer() -> Option<&'static str> {
    match std::env::var("TEST_VIA_PGBOUNCER").unwrap_or_default().to_ascii_lowercase().as_str() {
        "" | "0" | "false" => None,
        "1" | "true" | "transaction" => Some("transaction"),
        "session" => Some("session"),
        other => panic!("TEST_VIA_PGBOUNCER={other}: give transaction (or 1) or session"),
    }
}

static SERVER: OnceLock<Server> = OnceLock::new();

fn server() -> &'static Server {
    SERVER.get_or_init(|| match std::env::var("DATABASE_URL").ok().filter(|v| !v.is_empty()) {
        Some(_) if via_pgbouncer().is_some() => {
            panic!("TEST_VIA_PGBOUNCER starts its own PostgreSQL and PgBouncer: unset DATABASE_URL")
        }
        Some(url) => Server::External(url),
        None if let Some(mode) = via_pgbouncer() => {
            let binaries = find_binaries().unwrap_or_else(|e| panic!("{e}"));
            let root = std::env::temp_dir().join(format!("todo-test-pg-{}", uuid::Uuid::new_v4().simple()));
            let pg = PrivatePostgres::start(binaries, &root, Durability::Throwaway, true)
                .unwrap_or_else(|e| panic!("starting the private test PostgreSQL: {e}"));
            let bouncer = PgBouncer::start(&pg, &root.join("pgbouncer"), mode)
                .unwrap_or_else(|e| panic!("starting PgBouncer in front of it (TEST_VIA_PGBOUNCER={mode}): {e}"));
            let url = pg.url("postgres");
            Server::Pooled(pg, url, bouncer)
        }
        None => {
            let binaries = find_binaries().unwrap_or_else(|e| panic!("{e}"));
            let root = std::env::temp_dir().join(format!("todo-test-pg-{}", uuid::Uuid::new_v4().simple()));
            let pg = PrivatePostgres::start(binaries, &root, Durability::Throwaway, true)
                .unwrap_or_else(|e| panic!("starting the private test PostgreSQL: {e}"));
            let url = pg.url("postgres");
            // Statics are never dropped: the guardian stops the server when the process ends.
            Server::Private(pg, url)
        }
    })
}

/// A database created for one test, with every migration applied.
pub struct TestDatabase {
    pub name: String,
    /// Straight to PostgreSQL: for the test's own pool, migrations and LISTEN.
    pub url: String,
    /// What the services use: through PgBouncer with `TEST_VIA_PGBOUNCER`, else `url`.
    pub service_url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates and migrates a uniquely named database.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        todo_database::migrate(&db.pool).await.expect("migrations apply to a fresh database");
        db
    }

    /// Creates a uniquely named database with nothing in it.
    pub async fn empty() -> Self {
        let admin_url = server().admin_url().to_string();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let admin: PgConnectOptions = admin_url.parse().expect("DATABASE_URL is a PostgreSQL URL");
        let mut conn = admin.clone().connect().await.expect("the test PostgreSQL accepts connections");
        // The name is ours (a UUID), so formatting it into the statement is safe.
        conn.execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#))).await.expect("CREATE DATABASE");
        conn.close().await.ok();
        let options = admin.database(&name);
        let url = with_database(&admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect_with(options)
            .await
            .expect("the new test database accepts connections");
        let service_url = match server() {
            Server::Pooled(_, _, bouncer) => bouncer.url(&name),
            _ => url.clone(),
        };
        TestDatabase { name, url, service_url, pool }
    }
}

/// `url` with its database path replaced by `name`, query kept.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..].find('/').map(|i| i + scheme_end).unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database() {
        assert_eq!(super::with_database("postgres://u:p@h:1/postgres", "t"), "postgres://u:p@h:1/t");
        assert_eq!(super::with_database("postgres://h:1?sslmode=require", "t"), "postgres://h:1/t?sslmode=require");
    }
}
