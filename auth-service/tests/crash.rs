//! Crash safety: the real auth-service binary is killed with SIGKILL while clients sign up and
//! refresh. Every acknowledged account can log in after the restart, every acknowledged refresh
//! token still works, and no session is left without a refresh token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::process::{ServiceProcess, free_addr, lazy_channel, until_serving};
use testkit::test_database::TestDatabase;
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::{LoginRequest, RefreshTokenRequest, SignUpRequest};

fn start(db: &TestDatabase, addr: std::net::SocketAddr) -> ServiceProcess {
    ServiceProcess::start(
        env!("CARGO_BIN_EXE_auth-service"),
        "AUTH_ADDR",
        addr,
        db,
        &[("RUN_MIGRATIONS", "false"), ("BCRYPT_COST", "4")],
    )
}

/// One account's chain of refreshes: its email, and its last acknowledged refresh token when
/// no later call on it failed (a failed refresh may or may not have spent the token).
struct Chain {
    email: String,
    usable_refresh_token: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_leaves_no_half_written_session() {
    let db = TestDatabase::new().await;
    let addr = free_addr();
    let process = start(&db, addr);
    until_serving(addr).await;

    let chains: Arc<Mutex<Vec<Chain>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..3 {
        let (chains, stop) = (chains.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut auth = AuthServiceClient::new(lazy_channel(addr));
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let email = format!("w{worker}-{n}@example.com");
                let mut request =
                    tonic::Request::new(SignUpRequest { email: email.clone(), password: testkit::PASSWORD.into() });
                request.set_timeout(Duration::from_secs(2));
                let Ok(response) = auth.sign_up(request).await else {
                    continue;
                };
                let mut token = response.into_inner().tokens.unwrap().refresh_token;
                let mut usable = true;
                for _ in 0..3 {
                    let mut request = tonic::Request::new(RefreshTokenRequest { refresh_token: token.clone() });
                    request.set_timeout(Duration::from_secs(2));
                    match auth.refresh_token(request).await {
                        Ok(response) => token = response.into_inner().tokens.unwrap().refresh_token,
                        Err(_) => {
                            usable = false;
                            break;
                        }
                    }
                }
                chains.lock().unwrap().push(Chain { email, usable_refresh_token: usable.then_some(token) });
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    process.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let process = start(&db, addr);
    let restart = until_serving(addr).await;
    println!("restarted auth-service SERVING {restart:?} after its start");
    assert!(restart < Duration::from_secs(5), "a restart serves at once, took {restart:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions s WHERE NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.session_id = s.id)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "sessions without a refresh token");
    let users_without_session: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users u WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.user_id = u.id)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(users_without_session, 0, "accounts created without their first session");

    let chains = std::mem::take(&mut *chains.lock().unwrap());
    let broken = chains.iter().filter(|c| c.usable_refresh_token.is_none()).count();
    println!("{} accounts acknowledged, {broken} refresh chains cut by the kill", chains.len());
    assert!(broken > 0 || chains.len() > 10, "too little load to prove anything");
    let mut auth = AuthServiceClient::new(lazy_channel(addr));
    for chain in &chains {
        let login = LoginRequest { email: chain.email.clone(), password: testkit::PASSWORD.into() };
        auth.login(login).await.unwrap_or_else(|e| panic!("{} was acknowledged but cannot log in: {e:?}", chain.email));
        if let Some(token) = &chain.usable_refresh_token {
            let refresh = RefreshTokenRequest { refresh_token: token.clone() };
            auth.refresh_token(refresh).await.unwrap_or_else(|e| panic!("an acknowledged refresh token failed: {e:?}"));
        }
    }
    process.kill();
}
