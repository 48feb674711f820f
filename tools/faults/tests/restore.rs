//! The backup and point-in-time restore drill (issue #13): pgBackRest (`localpg::pgbackrest`)
//! against a PostgreSQL of the test's own with WAL archiving on, and both services as their real
//! binaries. A full backup; then more sign-ups and tasks, a Logout and a key retirement; the
//! time T; then more writes (a task, a sign-up, a sync token). Everything is stopped, the backup
//! is restored to T into a fresh data folder (the old one is gone by then), PostgreSQL replays
//! the archived WAL up to T and promotes, and the services start on it. The drill asserts:
//! - `auth-service verify` (the real binary) passes every check, and `migrate status` exits 0;
//! - the tasks written before T are there and those after T are not, through the API and in the
//!   rows; the account made after T is gone, the one made after the backup is there;
//! - the sync token issued after T gets FAILED_PRECONDITION `SYNC_TOKEN_UNKNOWN`, one issued
//!   before T still works, and a fresh sync returns exactly the tasks of T;
//! - the session revoked before T stays revoked (its access token: SESSION_REVOKED at
//!   task-service; its refresh token refused as before T), and the key retired before T stays
//!   retired (its token: INVALID_TOKEN; its row retired before T);
//! - the README's hazard and its remedy: once the user has made as many changes after the
//!   restore as were lost, the after-T token is accepted again and silently misses a change;
//!   the README's SQL step (every feed moved past any old token) turns it, and every older
//!   token, into `SYNC_TOKEN_EXPIRED`, and a fresh sync then returns everything;
//! - what a restore cannot undo, and the README's answer: the refresh token issued after T is
//!   refused, and once the key that signed the access tokens (B) is retired with `retire-key`,
//!   the access token issued after T is refused with INVALID_TOKEN, while a session of before T
//!   gets a new pair by refreshing.
//!
//! Were the restore to go to the latest point instead of T, the after-T task, account and token
//! would all be accepted; to the backup's end, the logout and the retirement would be undone.
//! It needs pgbackrest and is skipped without it unless `CI` is set (`localpg::system_tool`).

use localpg::pgbackrest::PgBackRest;
use localpg::{Durability, PrivatePostgres, find_binaries};
use secrecy::SecretString;
use sqlx::PgPool;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use testkit::process::{ServiceProcess, free_addr, lazy_channel, run_command, until_serving};
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{LogoutRequest, RefreshTokenRequest, SignUpRequest, TokenPair};
use todo_proto::task::v1::task_service_client::TaskServiceClient;
use todo_proto::task::v1::{CreateTaskRequest, ListTasksRequest, SyncTasksRequest};
use todo_shared::database::{DbConfig, PoolMode};
use tonic::Code;
use tonic::transport::Channel;

const AUTH: &str = env!("CARGO_BIN_EXE_faults-auth-service");
const TASK: &str = env!("CARGO_BIN_EXE_faults-task-service");

/// The README's step after a restore: every feed moves a billion changes on, its pruned mark
/// with it, so every sync token issued before (or, lost, after) the restore point is below the
/// mark and gets SYNC_TOKEN_EXPIRED; users with no feed yet get one.
const ADVANCE_FEEDS: &str = "INSERT INTO task_feeds (user_id, seq, pruned_seq)
SELECT id, 1000000000, 1000000000 FROM users
ON CONFLICT (user_id) DO UPDATE
SET seq = task_feeds.seq + 1000000000, pruned_seq = task_feeds.seq + 1000000000,
    changed_xid = pg_current_xact_id()";

/// Removes the drill's folder at the end (it may be in memory: see `drill_base`).
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// When the drill fails, prints the end of these logs (a server's, pgBackRest's) as it unwinds:
/// before the server that wrote one is dropped, which removes its folder.
struct LogsOnPanic(Vec<PathBuf>);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut tails = String::new();
        for log in &self.0 {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            tails.push_str(&format!("--- {} (last 20 lines)\n{tail}\n", log.display()));
        }
        let _ = std::io::stderr().write_all(tails.as_bytes());
    }
}

/// pgBackRest's log files (one per stanza and command).
fn backrest_logs(backrest: &PgBackRest) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(backrest.log_dir()).into_iter().flatten().flatten();
    entries.map(|entry| entry.path()).collect()
}

/// Where the drill keeps its files: /dev/shm (a tmpfs) when the machine has one, else the
/// temporary folder. pgBackRest syncs every file it writes, about a thousand for a fresh cluster
/// in the backup and again in the restore: 4 ms each on CI's disk, ten seconds of the drill. On
/// a tmpfs a sync costs nothing, and nothing the drill proves depends on the disk.
fn drill_base() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() { shm } else { std::env::temp_dir() }
}

fn db_config(url: &str) -> DbConfig {
    DbConfig {
        url: SecretString::from(url.to_string()),
        direct_url: None,
        max_connections: 5,
        pool_mode: PoolMode::Session,
        run_migrations: true,
    }
}

fn start_auth(url: &str) -> ServiceProcess {
    ServiceProcess::start_on(AUTH, "AUTH_ADDR", free_addr(), &db_config(url), &[("BCRYPT_COST", "4")])
}

fn start_task(url: &str) -> ServiceProcess {
    ServiceProcess::start_on(TASK, "TASK_ADDR", free_addr(), &db_config(url), &[("RUN_MIGRATIONS", "false")])
}

async fn sign_up(auth: &ServiceProcess, email: &str) -> TokenPair {
    let request = SignUpRequest { email: email.into(), password: testkit::PASSWORD.into() };
    let client = AuthServiceClient::new(lazy_channel(auth.addr));
    client.clone().sign_up(request).await.expect("sign-up").into_inner().tokens.expect("tokens")
}

async fn create(tasks: &TaskServiceClient<Channel>, who: &TokenPair, title: &str) {
    let request = CreateTaskRequest { title: title.into(), ..Default::default() };
    tasks.clone().create_task(testkit::authed(request, &who.access_token)).await.expect("create");
}

/// The caller's task titles through ListTasks, in creation order.
async fn listed(tasks: &TaskServiceClient<Channel>, who: &TokenPair) -> Result<Vec<String>, tonic::Status> {
    let request = ListTasksRequest { page_size: 1000, order_by: "create_time".into(), ..Default::default() };
    let page = tasks.clone().list_tasks(testkit::authed(request, &who.access_token)).await?.into_inner();
    Ok(page.tasks.into_iter().map(|t| t.title).collect())
}

/// SyncTasks from `token` to the end: the titles of the changed tasks (sorted), the deleted
/// ids, and the token to resume from.
async fn sync(
    tasks: &TaskServiceClient<Channel>,
    who: &TokenPair,
    token: &str,
) -> Result<(Vec<String>, Vec<i64>, String), tonic::Status> {
    let (mut titles, mut deleted, mut token) = (Vec::new(), Vec::new(), token.to_string());
    loop {
        let request = SyncTasksRequest { sync_token: token, page_size: 1000 };
        let page = tasks.clone().sync_tasks(testkit::authed(request, &who.access_token)).await?.into_inner();
        titles.extend(page.changed_tasks.into_iter().map(|t| t.title));
        deleted.extend(page.deleted_task_ids);
        token = page.next_sync_token;
        if !page.has_more {
            titles.sort();
            return Ok((titles, deleted, token));
        }
    }
}

fn refusal<T>(result: Result<T, tonic::Status>, what: &str) -> (Code, String) {
    match result {
        Ok(_) => panic!("{what} was accepted"),
        Err(status) => (status.code(), testkit::reason(&status)),
    }
}

fn sorted(titles: &[&str]) -> Vec<String> {
    let mut titles: Vec<String> = titles.iter().map(|t| t.to_string()).collect();
    titles.sort();
    titles
}

/// A pgBackRest or pg_ctl step, on this worker thread (the runtime moves its other work away).
fn blocking<T>(what: &str, step: impl FnOnce() -> Result<T, String>) -> T {
    tokio::task::block_in_place(step).unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn until_archived(pool: &PgPool, segment: &str) {
    let started = Instant::now();
    loop {
        let (archived, failed): (Option<String>, i64) =
            sqlx::query_as("SELECT last_archived_wal, failed_count FROM pg_stat_archiver")
                .fetch_one(pool)
                .await
                .expect("reading pg_stat_archiver");
        if archived.as_deref().is_some_and(|a| a >= segment) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{segment} not archived ({failed} failures)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_to_a_time_brings_back_exactly_the_state_at_that_time() {
    if localpg::system_tool::PGBACKREST.require().is_none() {
        return;
    }
    if let Some(mode) = localpg::test_database::via_pgbouncer() {
        // The drill brings its own PostgreSQL and never uses the suite's database.
        let line = format!(
            "skipped a_restore_to_a_time_brings_back_exactly_the_state_at_that_time: runs in the direct pass only (TEST_VIA_PGBOUNCER={mode})\n"
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    }
    let drill_started = Instant::now();
    let root = drill_base().join(format!("todo-restore-{}", uuid::Uuid::new_v4().simple()));
    let _folder = Folder(root.clone());
    let binaries = find_binaries().unwrap_or_else(|e| panic!("{e}"));

    // PostgreSQL archiving every WAL segment into pgBackRest's repository.
    let (mut backrest, server) = blocking("starting PostgreSQL with archiving", || {
        let mut backrest = PgBackRest::create(&root.join("pgbackrest"))?;
        let settings = backrest.server_settings();
        let server = PrivatePostgres::start_with_settings(
            binaries.clone(),
            &root.join("primary"),
            Durability::Safe,
            true,
            &settings,
        )?;
        backrest.attach(&server)?;
        backrest.stanza_create()?;
        backrest.check()?;
        Ok((backrest, server))
    });
    let url = server.url("postgres");
    let password = server.password().to_string();
    let primary_log = LogsOnPanic(vec![server.log_file()]);

    // auth-service A (its own key, which is retired before T), then B and task-service.
    let auth_a = start_auth(&url);
    until_serving(auth_a.addr).await;
    let pool = PgPool::connect(&url).await.expect("connecting");
    let kid_a: String = sqlx::query_scalar("SELECT kid FROM signing_keys").fetch_one(&pool).await.expect("A's key");
    let auth_b = start_auth(&url);
    let task = start_task(&url);
    until_serving(auth_b.addr).await;
    until_serving(task.addr).await;
    let kid_b: String = sqlx::query_scalar("SELECT kid FROM signing_keys WHERE kid <> $1")
        .bind(&kid_a)
        .fetch_one(&pool)
        .await
        .expect("B's key");
    let tasks = TaskServiceClient::new(lazy_channel(task.addr));
    let mut auth = AuthServiceClient::new(lazy_channel(auth_b.addr));

    let alice = sign_up(&auth_b, "alice@example.com").await;
    let bob = sign_up(&auth_b, "bob@example.com").await;
    let carol = sign_up(&auth_a, "carol@example.com").await;
    create(&tasks, &alice, "before the backup 1").await;
    create(&tasks, &alice, "before the backup 2").await;
    create(&tasks, &carol, "carol's, signed by A").await;

    let backup_started = Instant::now();
    blocking("the full backup", || backrest.backup_full());
    let backup_took = backup_started.elapsed();

    // After the backup, before T: a sign-up, tasks, a logout, a key retirement.
    let erin = sign_up(&auth_b, "erin@example.com").await;
    create(&tasks, &alice, "after the backup").await;
    create(&tasks, &erin, "erin's").await;
    auth.logout(LogoutRequest { refresh_token: bob.refresh_token.clone() }).await.expect("logout");
    let list_bob = || listed(&tasks, &bob);
    testkit::refused_within(Duration::from_secs(1), Code::Unauthenticated, "SESSION_REVOKED", list_bob).await;
    let bob_refresh_before =
        refusal(auth.refresh_token(RefreshTokenRequest { refresh_token: bob.refresh_token.clone() }).await, "refresh");
    assert_eq!(bob_refresh_before.0, Code::Unauthenticated, "{bob_refresh_before:?}");
    let retire = run_command(AUTH, &["retire-key", &kid_a], &[("DATABASE_URL", &url)]).await;
    assert_eq!(retire.code, 0, "{}", retire.text());
    drop(auth_a);
    let (_, _, token_before_t) = sync(&tasks, &alice, "").await.expect("sync before T");

    // T, a second clear of the writes on either side (commit times are the server's clock).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let target: String = sqlx::query_scalar("SELECT now()::text").fetch_one(&pool).await.expect("now()");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // After T: a task, a sign-up, a sync token; then the WAL holding them goes to the archive.
    create(&tasks, &alice, "after T").await;
    let dave = sign_up(&auth_b, "dave@example.com").await;
    create(&tasks, &dave, "dave's").await;
    let (titles_after_t, _, token_after_t) = sync(&tasks, &alice, "").await.expect("sync after T");
    assert!(titles_after_t.contains(&"after T".to_string()), "{titles_after_t:?}");
    let segment: String =
        sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())").fetch_one(&pool).await.expect("switch");
    until_archived(&pool, &segment).await;

    // Everything stops; the old data folder is removed with its server.
    drop((auth_b, task));
    pool.close().await;
    drop(primary_log);
    blocking("stopping PostgreSQL", || {
        drop(server);
        Ok(())
    });

    // Restore to T into a fresh folder, start PostgreSQL on it, wait for the promotion.
    let restore_logs =
        LogsOnPanic(vec![root.join("restored/server.log"), backrest.log_dir().join("drill-restore.log")]);
    let restore_started = Instant::now();
    let restored = blocking("restoring to T", || {
        let restored_root = root.join("restored");
        backrest.restore_to_time(&target, &restored_root.join("data"))?;
        let settings = backrest.server_settings();
        let restored =
            PrivatePostgres::start_restored(binaries, &restored_root, &password, Durability::Safe, true, &settings)?;
        backrest.attach(&restored)?;
        Ok(restored)
    });
    drop(restore_logs);
    let restored_logs = LogsOnPanic([vec![restored.log_file()], backrest_logs(&backrest)].concat());
    let url = restored.url("postgres");
    let pool = PgPool::connect(&url).await.expect("connecting to the restored server");
    loop {
        let recovering: bool =
            sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&pool).await.expect("pg_is_in_recovery");
        if !recovering {
            break;
        }
        assert!(restore_started.elapsed() < Duration::from_secs(60), "not promoted after 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restore_took = restore_started.elapsed();

    // The checks an operator runs, as the binaries.
    let verify = run_command(AUTH, &["verify"], &[("DATABASE_URL", &url)]).await;
    assert_eq!(verify.code, 0, "{}", verify.text());
    assert_eq!(verify.stdout.lines().filter(|l| l.starts_with("ok   ")).count(), 6, "{}", verify.text());
    assert!(verify.stdout.contains("all 6 checks passed"), "{}", verify.text());
    let status = run_command(TASK, &["migrate", "status"], &[("DATABASE_URL", &url)]).await;
    assert_eq!(status.code, 0, "{}", status.text());

    // The rows: the tasks and accounts of T, nothing after.
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT title FROM tasks ORDER BY title").fetch_all(&pool).await.expect("tasks");
    let before_t = ["after the backup", "before the backup 1", "before the backup 2", "carol's, signed by A", "erin's"];
    assert_eq!(rows, sorted(&before_t), "the task rows of T");
    let emails: Vec<String> =
        sqlx::query_scalar("SELECT email FROM users ORDER BY email").fetch_all(&pool).await.expect("users");
    assert_eq!(emails, sorted(&["alice@example.com", "bob@example.com", "carol@example.com", "erin@example.com"]));
    let retired_at_t: bool = sqlx::query_scalar(
        "SELECT retired_at IS NOT NULL AND retired_at <= $2::timestamptz FROM signing_keys WHERE kid = $1",
    )
    .bind(&kid_a)
    .bind(&target)
    .fetch_one(&pool)
    .await
    .expect("A's key row");
    assert!(retired_at_t, "key A's row says it was retired before T");

    // The services on the restored database (auth-service with a new key: A is retired).
    let auth_process = start_auth(&url);
    let task = start_task(&url);
    until_serving(auth_process.addr).await;
    until_serving(task.addr).await;
    let tasks = TaskServiceClient::new(lazy_channel(task.addr));
    let mut auth = AuthServiceClient::new(lazy_channel(auth_process.addr));

    let alice_titles = ["before the backup 1", "before the backup 2", "after the backup"];
    assert_eq!(listed(&tasks, &alice).await.expect("alice lists"), alice_titles, "ListTasks after the restore");
    assert_eq!(listed(&tasks, &erin).await.expect("erin lists"), ["erin's"]);

    // Sync: the token after T is unknown, the one before T goes on, a fresh sync has T's tasks.
    let unknown = refusal(sync(&tasks, &alice, &token_after_t).await, "the sync token issued after T");
    assert_eq!(unknown, (Code::FailedPrecondition, "SYNC_TOKEN_UNKNOWN".to_string()));
    let (since_before_t, deleted, _) = sync(&tasks, &alice, &token_before_t).await.expect("the token before T");
    assert!(since_before_t.is_empty() && deleted.is_empty(), "nothing changed since {since_before_t:?} {deleted:?}");
    let (fresh, deleted, _) = sync(&tasks, &alice, "").await.expect("a fresh sync");
    assert_eq!((fresh, deleted), (sorted(&alice_titles), vec![]), "a fresh sync has exactly the tasks of T");

    // The session revoked before T stays revoked; the key retired before T stays retired.
    let bob_listing = refusal(listed(&tasks, &bob).await, "bob's access token");
    assert_eq!(bob_listing, (Code::Unauthenticated, "SESSION_REVOKED".to_string()));
    let bob_refresh =
        refusal(auth.refresh_token(RefreshTokenRequest { refresh_token: bob.refresh_token.clone() }).await, "refresh");
    assert_eq!(bob_refresh, bob_refresh_before, "bob's refresh token is refused as before T");
    let carol_listing = refusal(listed(&tasks, &carol).await, "carol's token, signed by the retired key");
    assert_eq!(carol_listing, (Code::Unauthenticated, "INVALID_TOKEN".to_string()));

    // The hazard: one change after the restore (as many as were lost) and the token from after
    // T is accepted again, missing that change.
    create(&tasks, &alice, "after the restore").await;
    let (missed, _, _) = sync(&tasks, &alice, &token_after_t).await.expect("the old token is accepted again");
    assert!(missed.is_empty(), "the after-T token misses the new task: {missed:?}");
    // The remedy: every feed moved past any old token, with the README's statement.
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let readme = words(include_str!("../../../README.md"));
    assert!(readme.contains(&words(ADVANCE_FEEDS)), "README's Backup and recovery shows ADVANCE_FEEDS as it is here");
    sqlx::query(ADVANCE_FEEDS).execute(&pool).await.expect("advancing the feeds");
    for (name, token) in [("after T", &token_after_t), ("before T", &token_before_t)] {
        let expired = refusal(sync(&tasks, &alice, token).await, name);
        assert_eq!(expired, (Code::FailedPrecondition, "SYNC_TOKEN_EXPIRED".to_string()), "the token {name}");
    }
    let (fresh, _, fresh_token) = sync(&tasks, &alice, "").await.expect("a fresh sync after the step");
    let mut now = sorted(&alice_titles);
    now.push("after the restore".into());
    now.sort();
    assert_eq!(fresh, now, "a fresh sync has everything");
    create(&tasks, &alice, "after the step").await;
    let (next, _, _) = sync(&tasks, &alice, &fresh_token).await.expect("syncing on");
    assert_eq!(next, ["after the step"]);
    let verify = run_command(AUTH, &["verify"], &[("DATABASE_URL", &url)]).await;
    assert_eq!(verify.code, 0, "verify after the step: {}", verify.text());

    // What a restore cannot undo: dave's account is gone, but his access token (from after T)
    // is signed by a key that still verifies. His refresh token is refused (it is looked up);
    // retiring the key his access token was signed with is what stops that one, and a client
    // of before T gets a new pair by refreshing (signed by the new instance's key).
    let dave_refresh =
        refusal(auth.refresh_token(RefreshTokenRequest { refresh_token: dave.refresh_token.clone() }).await, "refresh");
    assert_eq!(dave_refresh.0, Code::Unauthenticated, "dave's refresh token from after T: {dave_refresh:?}");
    let retire = run_command(AUTH, &["retire-key", &kid_b], &[("DATABASE_URL", &url)]).await;
    assert_eq!(retire.code, 0, "{}", retire.text());
    let list_dave = || listed(&tasks, &dave);
    testkit::refused_within(Duration::from_secs(2), Code::Unauthenticated, "INVALID_TOKEN", list_dave).await;
    let alice_listing = refusal(listed(&tasks, &alice).await, "alice's token signed by the retired key B");
    assert_eq!(alice_listing, (Code::Unauthenticated, "INVALID_TOKEN".to_string()));
    let renewed = auth
        .refresh_token(RefreshTokenRequest { refresh_token: alice.refresh_token.clone() })
        .await
        .expect("alice's refresh token from before T")
        .into_inner()
        .tokens
        .expect("a new pair");
    assert_eq!(listed(&tasks, &renewed).await.expect("alice lists with her new pair").len(), 5);

    println!(
        "restore drill: {:.1} s in all; full backup {:.1} s; restore to T, start and promotion {:.1} s",
        drill_started.elapsed().as_secs_f64(),
        backup_took.as_secs_f64(),
        restore_took.as_secs_f64()
    );
    drop((auth_process, task));
    pool.close().await;
    drop(restored_logs);
    blocking("stopping the restored PostgreSQL", || {
        drop(restored);
        Ok(())
    });
}
