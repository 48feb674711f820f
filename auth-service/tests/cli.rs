//! The auth-service command line, run as the real binary: `--help` lists every setting,
//! `--version` names the commit, bad arguments get a usage line and exit code 2, and each
//! subcommand against a fresh database (`migrate`, `sessions`, `verify`), asserting the rows.

use sqlx::migrate::Migrate;
use sqlx::{Connection, PgConnection};
use testkit::test_database::TestDatabase;
use uuid::Uuid;

type Run = testkit::process::CommandRun;

/// `auth-service <args>` with only `env` (and PATH) in its environment.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    testkit::process::run_command(env!("CARGO_BIN_EXE_auth-service"), args, env).await
}

/// `auth-service <args>` on the test database.
async fn run_on(db: &TestDatabase, args: &[&str]) -> Run {
    run(args, &[("DATABASE_URL", &db.url)]).await
}

#[tokio::test]
async fn help_lists_every_setting_with_its_default() {
    let help = run(&["--help"], &[]).await;
    assert_eq!(help.code, 0, "{}", help.text());
    for setting in auth_service::config::settings().iter().flat_map(|list| list.iter()) {
        let line = format!("  {}  [default: {}]", setting.var, setting.default);
        assert!(help.stdout.contains(&line), "--help lacks {line:?}:\n{}", help.stdout);
    }
    for command in ["healthcheck", "migrate", "verify", "retire-key", "sessions"] {
        assert!(help.stdout.contains(command), "--help lacks {command}:\n{}", help.stdout);
    }
}

#[tokio::test]
async fn version_names_the_version_and_the_commit() {
    let version = run(&["--version"], &[]).await;
    assert_eq!(version.code, 0, "{}", version.text());
    let line = version.stdout.trim();
    let commit = line
        .strip_prefix(&format!("auth-service {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version: {line:?}"));
    assert!(
        commit == "unknown" || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{commit:?} is not a 12-digit commit"
    );
}

#[tokio::test]
async fn bad_arguments_and_settings_exit_2_with_a_usage_line_or_the_variable() {
    for args in [
        &["no-such-command"][..],
        &["--no-such-flag"],
        &["migrate"],
        &["migrate", "down", "--to", "soon"],
        &["sessions", "list"],
        &["sessions", "revoke", "--email", "a@example.com", "--session", "not-a-uuid"],
        &["retire-key"],
        &["retire-key", "some-kid", "soon"],
    ] {
        let bad = run(args, &[("DATABASE_URL", "postgres://nowhere/db")]).await;
        assert_eq!(bad.code, 2, "{args:?}: {}", bad.text());
        assert!(bad.stderr.contains("Usage: auth-service"), "{args:?}: no usage line: {}", bad.text());
    }
    // A bad setting: one line naming the variable, as when serving.
    let bad = run(&["migrate", "status"], &[("DATABASE_URL", "mysql://h/db")]).await;
    assert_eq!(bad.code, 2, "{}", bad.text());
    assert!(bad.stderr.starts_with("auth-service: configuration error: DATABASE_URL: "), "{}", bad.text());
    let bad = run(&["verify"], &[]).await;
    assert_eq!(bad.code, 2, "{}", bad.text());
    assert!(bad.stderr.contains("DATABASE_URL: is not set"), "{}", bad.text());
}

async fn applied_versions(db: &TestDatabase) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version").fetch_all(&db.pool).await.unwrap()
}

async fn table_exists(db: &TestDatabase, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(table).fetch_one(&db.pool).await.unwrap()
}

#[tokio::test]
async fn migrate_status_down_and_up_round_trip_with_its_refusals() {
    let db = TestDatabase::new().await;
    let all = applied_versions(&db).await;
    assert_eq!(all.len(), 11);
    let newest = *all.last().unwrap();

    let status = run_on(&db, &["migrate", "status"]).await;
    assert_eq!(status.code, 0, "{}", status.text());
    assert_eq!(status.stdout.lines().filter(|l| l.ends_with(" applied")).count(), 11, "{}", status.text());

    // The newest down script drops a table: refused without --yes, saying what it would drop.
    let refused = run_on(&db, &["migrate", "down"]).await;
    assert_eq!(refused.code, 1, "{}", refused.text());
    assert!(refused.stderr.contains("would drop data: DROP TABLE task_tombstones"), "{}", refused.text());
    assert!(refused.stderr.contains("--yes"), "{}", refused.text());
    assert_eq!(applied_versions(&db).await, all, "nothing reverted");

    // While another session holds sqlx's migration lock (an instance migrating at start):
    // refused, nothing reverted.
    let mut other = PgConnection::connect(&db.url).await.unwrap();
    other.lock().await.unwrap();
    let locked = run_on(&db, &["migrate", "down", "--yes"]).await;
    assert_eq!(locked.code, 1, "{}", locked.text());
    assert!(locked.stderr.contains("another instance is migrating"), "{}", locked.text());
    assert_eq!(applied_versions(&db).await, all, "nothing reverted while locked");
    other.unlock().await.unwrap();

    // One step with --yes.
    let one = run_on(&db, &["migrate", "down", "--yes"]).await;
    assert_eq!(one.code, 0, "{}", one.text());
    assert!(one.stdout.contains(&format!("reverted {newest}")), "{}", one.text());
    assert_eq!(applied_versions(&db).await, all[..10]);
    assert!(!table_exists(&db, "task_tombstones").await && table_exists(&db, "task_versions").await);
    let status = run_on(&db, &["migrate", "status"]).await;
    assert!(status.stdout.contains(&format!("{newest} change numbers on tasks")), "{}", status.text());
    assert!(
        status.stdout.lines().any(|l| l.starts_with(&newest.to_string()) && l.ends_with(" pending")),
        "{}",
        status.text()
    );

    // Down to migration 3: refused at 10 (drops a table) without --yes, then done with it.
    let refused = run_on(&db, &["migrate", "down", "--to", "20260101000003"]).await;
    assert_eq!(refused.code, 1, "{}", refused.text());
    assert!(refused.stderr.contains("DROP TABLE email_conflicts"), "{}", refused.text());
    assert_eq!(applied_versions(&db).await, all[..10]);
    let down = run_on(&db, &["migrate", "down", "--to", "20260101000003", "--yes"]).await;
    assert_eq!(down.code, 0, "{}", down.text());
    assert_eq!(applied_versions(&db).await, all[..3]);
    assert!(!table_exists(&db, "task_feeds").await && !table_exists(&db, "login_throttle").await);
    // Not a version that is applied.
    let bad = run_on(&db, &["migrate", "down", "--to", "20260101000007", "--yes"]).await;
    assert_eq!(bad.code, 1, "{}", bad.text());

    // Up applies the rest, under sqlx's lock.
    let up = run_on(&db, &["migrate", "up"]).await;
    assert_eq!(up.code, 0, "{}", up.text());
    assert!(up.stdout.contains("8 migration(s) applied"), "{}", up.text());
    assert_eq!(applied_versions(&db).await, all);
    assert!(table_exists(&db, "email_conflicts").await);

    // A migration the binary does not know, and one whose script changed: flagged, exit code 1.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (20990101000000, 'from the future', true, '\\x00', 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x01' WHERE version = 20260101000005")
        .execute(&db.pool)
        .await
        .unwrap();
    let status = run_on(&db, &["migrate", "status"]).await;
    assert_eq!(status.code, 1, "{}", status.text());
    assert!(status.stdout.contains("20990101000000") && status.stdout.contains("UNKNOWN"), "{}", status.text());
    assert!(status.stdout.contains("CHECKSUM DIFFERS"), "{}", status.text());
}

/// A user with `sessions` sessions (made by SQL, as Login makes them), returning its id and theirs.
async fn user_with_sessions(db: &TestDatabase, email: &str, sessions: usize) -> (Uuid, Vec<Uuid>) {
    let user: Uuid = sqlx::query_scalar("INSERT INTO users (email, password_hash) VALUES ($1, 'x') RETURNING id")
        .bind(email)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..sessions {
        ids.push(
            sqlx::query_scalar(
                "INSERT INTO sessions (user_id, created_user_agent, last_user_agent, last_address)
                 VALUES ($1, $2, $2, '192.0.2.7') RETURNING id",
            )
            .bind(user)
            .bind(format!("client-{n}"))
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        );
    }
    (user, ids)
}

async fn revoked(db: &TestDatabase, session: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT revoked_reason FROM sessions WHERE id = $1")
        .bind(session)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn sessions_list_and_revoke_one_or_all_of_an_account() {
    let db = TestDatabase::new().await;
    let (_, ids) = user_with_sessions(&db, "kate@example.com", 3).await;
    let (_, others) = user_with_sessions(&db, "other@example.com", 1).await;
    // task-service hears of revocations from this trigger's NOTIFY.
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("session_revoked").await.unwrap();

    // The email is canonicalised as at sign-up.
    let list = run_on(&db, &["sessions", "list", "--email", "  KATE@Example.COM "]).await;
    assert_eq!(list.code, 0, "{}", list.text());
    for id in &ids {
        let line =
            list.stdout.lines().find(|l| l.starts_with(&id.to_string())).unwrap_or_else(|| panic!("{}", list.text()));
        assert!(line.contains("192.0.2.7") && line.contains("client-") && line.ends_with("live"), "{line}");
    }
    assert!(!list.stdout.contains(&others[0].to_string()), "another account's session listed");

    let one =
        run_on(&db, &["sessions", "revoke", "--email", "kate@example.com", "--session", &ids[1].to_string()]).await;
    assert_eq!(one.code, 0, "{}", one.text());
    assert_eq!(revoked(&db, ids[1]).await.as_deref(), Some("revoked_by_operator"));
    assert_eq!((revoked(&db, ids[0]).await, revoked(&db, ids[2]).await), (None, None));
    let heard = tokio::time::timeout(std::time::Duration::from_secs(1), listener.recv()).await.unwrap().unwrap();
    assert_eq!(heard.payload(), ids[1].to_string());

    // Another account's session is not this account's to revoke.
    let not_theirs =
        run_on(&db, &["sessions", "revoke", "--email", "kate@example.com", "--session", &others[0].to_string()]).await;
    assert_eq!(not_theirs.code, 1, "{}", not_theirs.text());
    assert_eq!(revoked(&db, others[0]).await, None);

    let all = run_on(&db, &["sessions", "revoke", "--email", "Kate@example.com"]).await;
    assert_eq!(all.code, 0, "{}", all.text());
    assert!(all.stdout.contains("2 session(s)"), "{}", all.text());
    for id in &ids {
        assert!(revoked(&db, *id).await.is_some(), "{id} revoked");
    }
    assert_eq!(revoked(&db, others[0]).await, None, "the other account untouched");
    let list = run_on(&db, &["sessions", "list", "--email", "kate@example.com"]).await;
    assert_eq!(list.stdout.matches("revoked ").count(), 3, "{}", list.text());

    let nobody = run_on(&db, &["sessions", "list", "--email", "nobody@example.com"]).await;
    assert_eq!(nobody.code, 1, "{}", nobody.text());
    assert!(!format!("{}{}", list.stdout, nobody.stderr).contains("password"), "no secrets printed");
}

#[tokio::test]
async fn verify_passes_on_a_healthy_database_and_names_a_session_without_its_user() {
    let db = TestDatabase::new().await;
    // A key that verifies, as auth-service registers it; an account with a session and a task.
    sqlx::query("INSERT INTO signing_keys (kid, public_key) VALUES ('k1', decode(repeat('00', 32), 'hex'))")
        .execute(&db.pool)
        .await
        .unwrap();
    let (user, _) = user_with_sessions(&db, "kate@example.com", 1).await;
    sqlx::query("INSERT INTO tasks (user_id, title) VALUES ($1, 't')").bind(user).execute(&db.pool).await.unwrap();

    let healthy = run_on(&db, &["verify"]).await;
    assert_eq!(healthy.code, 0, "{}", healthy.text());
    assert_eq!(healthy.stdout.lines().filter(|l| l.starts_with("ok   ")).count(), 6, "{}", healthy.text());

    // A session of a user that does not exist, written past its foreign key (as a replica or a
    // careless restore would).
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SET session_replication_role = replica").execute(&mut conn).await.unwrap();
    sqlx::query("INSERT INTO sessions (user_id) VALUES (gen_random_uuid())").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let broken = run_on(&db, &["verify"]).await;
    assert_eq!(broken.code, 1, "{}", broken.text());
    assert!(
        broken.stdout.contains("FAIL session owners: 2 sessions; 1 session(s) of a user that does not exist"),
        "{}",
        broken.text()
    );
    assert!(
        broken.stdout.contains("FAIL constraints") && broken.stdout.contains("fk_sessions_user_id: 1 violating row"),
        "{}",
        broken.text()
    );

    // Every key retired: nothing verifies.
    let db = TestDatabase::new().await;
    let no_key = run_on(&db, &["verify"]).await;
    assert_eq!(no_key.code, 1, "{}", no_key.text());
    assert!(no_key.stdout.contains("FAIL signing keys"), "{}", no_key.text());
}
