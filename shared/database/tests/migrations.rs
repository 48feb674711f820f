//! The migrations against a real PostgreSQL: the design document's schema exactly, reversible
//! (up, down, up again leaves the same catalog), and safe when instances start at once.

use localpg::test_database::TestDatabase;
use sqlx::PgPool;
use todo_database::{MIGRATOR, migrate};

/// Everything of ours in the catalog, as sorted text: columns, constraints, indexes, triggers,
/// functions. sqlx's own bookkeeping table is left out.
async fn catalog(pool: &PgPool) -> Vec<String> {
    let queries = [
        "SELECT format('column %s.%s %s(%s) null=%s default=%s', table_name, column_name, data_type,
                coalesce(character_maximum_length::text, ''), is_nullable, coalesce(column_default, ''))
         FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
        "SELECT format('constraint %s on %s: %s', conname, conrelid::regclass, pg_get_constraintdef(oid))
         FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid <> '_sqlx_migrations'::regclass",
        "SELECT format('index %s', indexdef) FROM pg_indexes WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations'",
        "SELECT format('trigger %s', pg_get_triggerdef(oid)) FROM pg_trigger WHERE NOT tgisinternal",
        "SELECT format('function %s: %s', proname, prosrc) FROM pg_proc WHERE pronamespace = 'public'::regnamespace",
        "SELECT format('sequence %s', sequence_name) FROM information_schema.sequences WHERE sequence_schema = 'public'",
    ];
    let mut rows = Vec::new();
    for q in queries {
        rows.extend(sqlx::query_scalar::<_, String>(q).fetch_all(pool).await.unwrap());
    }
    rows.sort();
    rows
}

#[tokio::test]
async fn up_down_up_leaves_the_same_catalog() {
    let db = TestDatabase::empty().await;
    migrate(&db.pool).await.unwrap();
    let up = catalog(&db.pool).await;
    MIGRATOR.undo(&db.pool, 0).await.unwrap();
    let down = catalog(&db.pool).await;
    assert_eq!(down, Vec::<String>::new(), "down removes everything the migrations made");
    migrate(&db.pool).await.unwrap();
    assert_eq!(catalog(&db.pool).await, up);
}

#[tokio::test]
async fn the_first_migration_is_the_design_documents_schema() {
    let db = TestDatabase::empty().await;
    MIGRATOR.run_to(20260101000001, &db.pool).await.unwrap();
    let all = catalog(&db.pool).await;
    let has = |line: &str| assert!(all.iter().any(|l| l == line), "missing {line:?} in\n{}", all.join("\n"));

    has("column users.id uuid() null=NO default=gen_random_uuid()");
    has("column users.email character varying(255) null=NO default=");
    has("column users.password_hash character varying(255) null=NO default=");
    has("column users.created_at timestamp with time zone() null=YES default=now()");
    has("column users.updated_at timestamp with time zone() null=YES default=now()");
    has("column tasks.id integer() null=NO default=nextval('tasks_id_seq'::regclass)");
    has("column tasks.user_id uuid() null=NO default=");
    has("column tasks.title character varying(255) null=NO default=");
    has("column tasks.description text() null=YES default=");
    has("column tasks.completed boolean() null=NO default=false");
    has("column tasks.created_at timestamp with time zone() null=YES default=now()");
    has("column tasks.updated_at timestamp with time zone() null=YES default=now()");
    assert_eq!(all.iter().filter(|l| l.starts_with("column ")).count(), 12, "no other columns");

    has("constraint fk_tasks_user_id on tasks: FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE");
    has("constraint users_email_key on users: UNIQUE (email)");
    has(
        "constraint chk_tasks_title_length on tasks: CHECK (((char_length((title)::text) >= 1) AND (char_length((title)::text) <= 255)))",
    );
    has(
        "constraint chk_tasks_description_length on tasks: CHECK (((description IS NULL) OR (char_length(description) <= 1000)))",
    );

    for index in [
        "idx_users_email ON public.users USING btree (email)",
        "idx_users_created_at ON public.users USING btree (created_at)",
        "idx_tasks_user_id ON public.tasks USING btree (user_id)",
        "idx_tasks_completed ON public.tasks USING btree (completed)",
        "idx_tasks_user_completed ON public.tasks USING btree (user_id, completed)",
        "idx_tasks_created_at ON public.tasks USING btree (created_at)",
        "idx_tasks_updated_at ON public.tasks USING btree (updated_at)",
    ] {
        has(&format!("index CREATE INDEX {index}"));
    }
    has(
        "trigger CREATE TRIGGER trg_users_updated_at BEFORE UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION set_updated_at()",
    );
    has(
        "trigger CREATE TRIGGER trg_tasks_updated_at BEFORE UPDATE ON public.tasks FOR EACH ROW EXECUTE FUNCTION set_updated_at()",
    );
}

#[tokio::test]
async fn triggers_keep_updated_at_current_and_deletes_cascade() {
    let db = TestDatabase::new().await;
    let user: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO users (email, password_hash, updated_at) VALUES ('a@example.com', 'x', now() - interval '1 day') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO tasks (user_id, title, updated_at) VALUES ($1, 't', now() - interval '1 day')")
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET email = 'b@example.com'").execute(&db.pool).await.unwrap();
    sqlx::query("UPDATE tasks SET completed = true").execute(&db.pool).await.unwrap();
    for table in ["users", "tasks"] {
        let fresh: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT updated_at > now() - interval '1 minute' FROM {table}"
        )))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(fresh, "{table}.updated_at follows updates");
    }
    // The schema's CHECKs hold whoever writes.
    let err = sqlx::query("INSERT INTO tasks (user_id, title) VALUES ($1, '')")
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert_eq!(todo_database::violated_constraint(&err), Some("chk_tasks_title_length"));
    sqlx::query("DELETE FROM users").execute(&db.pool).await.unwrap();
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks").fetch_one(&db.pool).await.unwrap();
    assert_eq!(tasks, 0);
}

#[tokio::test]
async fn instances_migrating_at_once_apply_each_migration_once() {
    let db = TestDatabase::empty().await;
    // Four "instances", each with its own pool, starting together.
    let mut handles = Vec::new();
    for _ in 0..4 {
        let url = db.url.clone();
        handles.push(tokio::spawn(async move {
            let pool = PgPool::connect(&url).await.unwrap();
            migrate(&pool).await
        }));
    }
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&db.pool).await.unwrap();
    let ups = MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration()).count();
    assert_eq!(applied as usize, ups);
}

#[tokio::test]
async fn emails_are_unique_whatever_their_case_even_written_by_sql() {
    let db = TestDatabase::new().await;
    sqlx::query("INSERT INTO users (email, password_hash) VALUES ('Kate@Example.com', 'x')")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO users (email, password_hash) VALUES ('kate@example.COM', 'x')")
        .execute(&db.pool)
        .await
        .unwrap_err();
    let constraint = err.as_database_error().and_then(|e| e.constraint()).map(str::to_owned);
    assert_eq!(constraint.as_deref(), Some("uq_users_email_lower"), "{err}");
}

/// The feed's rows under 0007's design, as `task_versions` holds them.
async fn task_versions(pool: &PgPool) -> Vec<(uuid::Uuid, i32, i64, i64, bool)> {
    sqlx::query_as(
        "SELECT user_id, task_id, seq, created_seq, deleted_at IS NOT NULL FROM task_versions ORDER BY user_id, task_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_feed_on_the_tasks_goes_back_to_0007_with_its_rows() {
    let db = TestDatabase::empty().await;
    MIGRATOR.run_to(20260101000010, &db.pool).await.unwrap();
    let design_0007 = catalog(&db.pool).await;
    // Under 0007: tasks created, one renamed, one deleted, one moved to another user.
    sqlx::raw_sql(
        "INSERT INTO users (id, email, password_hash) VALUES
             ('00000000-0000-4000-8000-000000000001', 'a@example.com', 'x'),
             ('00000000-0000-4000-8000-000000000002', 'b@example.com', 'x');
         INSERT INTO tasks (user_id, title) SELECT '00000000-0000-4000-8000-000000000001', 't' || g FROM generate_series(1, 5) g;
         UPDATE tasks SET title = 'renamed' WHERE id = 2;
         DELETE FROM tasks WHERE id = 3;
         UPDATE tasks SET user_id = '00000000-0000-4000-8000-000000000002' WHERE id = 4;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let rows_0007 = task_versions(&db.pool).await;

    migrate(&db.pool).await.unwrap();
    let (live, tombstones): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM tasks WHERE feed_seq IS NOT NULL), (SELECT count(*) FROM task_tombstones)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((live, tombstones), (4, 2), "every task numbered, the deleted and the moved-away one tombstoned");
    MIGRATOR.undo(&db.pool, 20260101000010).await.unwrap();
    assert_eq!(catalog(&db.pool).await, design_0007, "0011's down restores 0007's design exactly");
    assert_eq!(task_versions(&db.pool).await, rows_0007, "and its rows");

    // A change under 0011 is in 0007's rows after the way back: the next number, creation kept.
    migrate(&db.pool).await.unwrap();
    sqlx::query("UPDATE tasks SET completed = true WHERE id = 2").execute(&db.pool).await.unwrap();
    MIGRATOR.undo(&db.pool, 20260101000010).await.unwrap();
    let after = task_versions(&db.pool).await;
    let before = rows_0007.iter().find(|r| r.1 == 2).unwrap();
    let renamed = after.iter().find(|r| r.1 == 2).unwrap();
    let counter: i64 = sqlx::query_scalar("SELECT seq FROM task_feeds WHERE user_id = $1")
        .bind(before.0)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((renamed.2, renamed.3, renamed.4), (counter, before.3, false));
}
