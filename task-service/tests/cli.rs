//! The task-service command line, run as the real binary: `--help` lists every setting,
//! `--version` names the commit, bad arguments exit 2 with a usage line, and `migrate status`
//! and `verify` (the checks auth-service's `verify` runs too) against a fresh database.

use testkit::test_database::TestDatabase;

type Run = testkit::process::CommandRun;

/// `task-service <args>` with only `env` (and PATH) in its environment.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    testkit::process::run_command(env!("CARGO_BIN_EXE_task-service"), args, env).await
}

#[tokio::test]
async fn help_version_and_bad_arguments() {
    let help = run(&["--help"], &[]).await;
    assert_eq!(help.code, 0, "{}", help.text());
    for setting in task_service::config::settings().iter().flat_map(|list| list.iter()) {
        let line = format!("  {}  [default: {}]", setting.var, setting.default);
        assert!(help.stdout.contains(&line), "--help lacks {line:?}:\n{}", help.stdout);
    }
    let version = run(&["--version"], &[]).await;
    assert_eq!(version.code, 0, "{}", version.text());
    let prefix = format!("task-service {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(version.stdout.starts_with(&prefix) && version.stdout.trim_end().ends_with(')'), "{}", version.text());
    for args in [&["retire-key", "k"][..], &["sessions"], &["migrate", "sideways"], &["verify", "--all"]] {
        let bad = run(args, &[]).await;
        assert_eq!(bad.code, 2, "{args:?}: {}", bad.text());
        assert!(bad.stderr.contains("Usage: task-service"), "{args:?}: {}", bad.text());
    }
    let bad = run(&["migrate", "status"], &[("DATABASE_URL", "postgres://h/db"), ("DB_MAX_CONNECTIONS", "0")]).await;
    assert_eq!(bad.code, 2, "{}", bad.text());
    assert!(bad.stderr.contains("configuration error: DB_MAX_CONNECTIONS"), "{}", bad.text());
}

#[tokio::test]
async fn verify_names_a_task_without_its_feed_row() {
    let db = TestDatabase::new().await;
    let env = [("DATABASE_URL", db.url.as_str())];
    let status = run(&["migrate", "status"], &env).await;
    assert_eq!(status.code, 0, "{}", status.text());
    sqlx::query("INSERT INTO signing_keys (kid, public_key) VALUES ('k1', decode(repeat('00', 32), 'hex'))")
        .execute(&db.pool)
        .await
        .unwrap();
    let user: uuid::Uuid =
        sqlx::query_scalar("INSERT INTO users (email, password_hash) VALUES ('a@example.com', 'x') RETURNING id")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    for title in ["one", "two"] {
        sqlx::query("INSERT INTO tasks (user_id, title) VALUES ($1, $2)")
            .bind(user)
            .bind(title)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let healthy = run(&["verify"], &env).await;
    assert_eq!(healthy.code, 0, "{}", healthy.text());
    assert!(healthy.stdout.contains("ok   feed rows: 2 tasks"), "{}", healthy.text());

    // A task without its change numbers, written past the trigger that sets them.
    sqlx::raw_sql(
        "ALTER TABLE tasks DISABLE TRIGGER trg_tasks_number_change;
         UPDATE tasks SET feed_seq = NULL WHERE id = (SELECT min(id) FROM tasks);
         ALTER TABLE tasks ENABLE TRIGGER trg_tasks_number_change;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let broken = run(&["verify"], &env).await;
    assert_eq!(broken.code, 1, "{}", broken.text());
    assert!(broken.stdout.contains("FAIL feed rows: 2 tasks; 1 task(s) without"), "{}", broken.text());
    assert!(broken.stdout.contains("ok   session owners"), "only what is broken fails: {}", broken.text());

    // A change ahead of its feed's counter.
    sqlx::query("UPDATE task_feeds SET seq = 0").execute(&db.pool).await.unwrap();
    let behind = run(&["verify"], &env).await;
    assert_eq!(behind.code, 1, "{}", behind.text());
    assert!(behind.stdout.contains("FAIL feed counters"), "{}", behind.text());
}
