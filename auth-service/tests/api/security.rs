//! Throttling, overload, hash upgrades and secrets in logs.

use std::time::{Duration, Instant};
use testkit::test_database::TestDatabase;
use testkit::{PASSWORD, assert_error, auth_config, authed, channel, spawn_auth};
use todo_proto::auth::v1::auth_service_client::AuthServiceClient;
use todo_proto::auth::v1::*;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

async fn client(server: &testkit::RunningServer) -> AuthServiceClient<Channel> {
    AuthServiceClient::new(channel(server.addr).await)
}

/// A client whose connections come from `source`, another loopback address (any of 127/8).
async fn client_from(server: std::net::SocketAddr, source: &str) -> AuthServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{server}"))
        .unwrap()
        .local_address(Some(source.parse().unwrap()))
        .connect()
        .await
        .expect("connecting from another loopback address");
    AuthServiceClient::new(channel)
}

async fn sign_up(auth: &mut AuthServiceClient<Channel>, email: &str) -> TokenPair {
    auth.sign_up(SignUpRequest { email: email.into(), password: PASSWORD.into() })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
}

async fn login(
    auth: &mut AuthServiceClient<Channel>,
    email: &str,
    password: &str,
) -> Result<LoginResponse, tonic::Status> {
    auth.login(LoginRequest { email: email.into(), password: password.into() }).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn an_account_is_throttled_across_instances_without_locking_others() {
    let db = TestDatabase::new().await;
    let mut config = auth_config(&db);
    config.throttle.max_failures_per_account = 3;
    config.throttle.window = Duration::from_secs(2);
    let (one, two) = (spawn_auth(config.clone()).await, spawn_auth(config).await);
    let (mut a, mut b) = (client(&one).await, client(&two).await);
    sign_up(&mut a, "victim@example.com").await;
    sign_up(&mut a, "bystander@example.com").await;

    // Three failures, spread over both instances.
    for mut auth in [a.clone(), b.clone(), a.clone()] {
        let err = login(&mut auth, "victim@example.com", "guess").await.unwrap_err();
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    // Now even the right password is refused, on either instance, with a RetryInfo.
    for mut auth in [b.clone(), a.clone()] {
        let err = login(&mut auth, "victim@example.com", PASSWORD).await.unwrap_err();
        assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
        let delay = err.get_details_retry_info().and_then(|r| r.retry_delay).expect("a RetryInfo delay");
        assert!(delay > Duration::ZERO && delay <= Duration::from_secs(2), "{delay:?}");
    }
    // Another account from the same address is not affected.
    login(&mut a, "bystander@example.com", PASSWORD).await.unwrap();
    // After the window, the right password works again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    login(&mut b, "victim@example.com", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn a_successful_login_clears_the_accounts_failure_count() {
    let db = TestDatabase::new().await;
    let mut config = auth_config(&db);
    config.throttle.max_failures_per_account = 3;
    let server = spawn_auth(config).await;
    let mut auth = client(&server).await;
    sign_up(&mut auth, "typo@example.com").await;
    // A real user who mistypes twice before each success, three times over: six failures in one
    // window, never three in a row, so never locked out.
    for round in 0..3 {
        for _ in 0..2 {
            let err = login(&mut auth, "typo@example.com", "mistyped password").await.unwrap_err();
            assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
        }
        login(&mut auth, "typo@example.com", PASSWORD).await.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        let account: Option<i32> =
            sqlx::query_scalar("SELECT failures FROM login_throttle WHERE key = 'account:typo@example.com'")
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        assert_eq!(account, None, "a success deletes the account's count");
        // The address keeps its failures (only the successful attempt is taken back).
        let address: i32 = sqlx::query_scalar("SELECT failures FROM login_throttle WHERE key LIKE 'address:%'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(address, 2 * (round + 1));
    }
}

#[tokio::test]
async fn one_address_is_throttled_across_accounts_at_its_own_higher_limit() {
    let db = TestDatabase::new().await;
    let mut config = auth_config(&db);
    config.throttle.max_failures_per_account = 100;
    config.throttle.max_failures_per_address = 4;
    let server = spawn_auth(config).await;
    let mut auth = client(&server).await;
    sign_up(&mut auth, "real@example.com").await;
    for i in 0..4 {
        let err = login(&mut auth, &format!("made-up-{i}@example.com"), "guess").await.unwrap_err();
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    let err = login(&mut auth, "real@example.com", PASSWORD).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM login_throttle WHERE key LIKE 'address:%'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn ipv4_clients_of_a_dual_stack_listener_are_throttled_each_by_its_own_address() {
    // On `[::]` an IPv4 client arrives as ::ffff:a.b.c.d; counted by /64, every IPv4 client
    // would share one counter and one of them could lock the others out.
    let db = TestDatabase::new().await;
    let mut config = auth_config(&db);
    config.throttle.max_failures_per_account = 100;
    config.throttle.max_failures_per_address = 3;
    let listener = tokio::net::TcpListener::bind("[::]:0").await.expect("a dual-stack listener");
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(auth_service::serve(listener, config, async move {
        let _ = stopped.await;
    }));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mut guesser, mut owner) = (client_from(addr, "127.0.0.2").await, client_from(addr, "127.0.0.3").await);
    sign_up(&mut owner, "owner@example.com").await;
    for i in 0..3 {
        let err = login(&mut guesser, &format!("made-up-{i}@example.com"), "guess").await.unwrap_err();
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    let err = login(&mut guesser, "owner@example.com", PASSWORD).await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    login(&mut owner, "owner@example.com", PASSWORD).await.expect("another IPv4 client is not throttled");
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM login_throttle WHERE key LIKE 'address:%'")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(keys, ["address:127.0.0.2"]);
    drop(stop);
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn throttled_attempts_take_no_hashing_slot_and_everyone_else_still_logs_in() {
    // At cost 12 (about 250 ms a check) two cores have 2 slots and 16 places in the queue. 40
    // attempts on a throttled account at once must all get TOO_MANY_ATTEMPTS, none OVERLOADED,
    // and a bystander's login at the same time succeeds.
    let db = TestDatabase::new().await;
    let mut config = auth_config(&db);
    config.bcrypt_cost = 12;
    config.throttle.max_failures_per_account = 3;
    config.throttle.max_failures_per_address = 10_000;
    let server = spawn_auth(config).await;
    let mut auth = client(&server).await;
    sign_up(&mut auth, "victim@example.com").await;
    sign_up(&mut auth, "bystander@example.com").await;
    for _ in 0..3 {
        let err = login(&mut auth, "victim@example.com", "guess").await.unwrap_err();
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
    }
    let mut flood = Vec::new();
    for _ in 0..40 {
        let mut c = auth.clone();
        flood.push(tokio::spawn(async move {
            let started = Instant::now();
            let err = login(&mut c, "victim@example.com", "guess").await.unwrap_err();
            (testkit::reason(&err), started.elapsed())
        }));
    }
    login(&mut auth, "bystander@example.com", PASSWORD).await.expect("a bystander logs in during the flood");
    for attempt in flood {
        let (reason, took) = attempt.await.unwrap();
        assert_eq!(reason, "TOO_MANY_ATTEMPTS", "a throttled attempt never waits for a hashing slot");
        // Paced like a check at cost 12 (about 250 ms here), not answered at once.
        assert!(took >= Duration::from_millis(100), "answered in {took:?}, faster than a password check");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_flooding_password_checks_gets_its_turn_and_another_address_still_logs_in() {
    // Two cores have 2 hashing slots and 16 waiting places. One address keeps 32 logins going;
    // first come first served, they would hold every waiting place and the other address's
    // logins would be refused (OVERLOADED) at once. Shared fairly, the flood holds at most half
    // the places and has one call in line at a time, so the other address waits about one
    // check. Cost 10 (about 60 ms a check) leaves that wait far below the 1 s limit even when
    // other tests share the cores.
    let db = TestDatabase::new().await;
    let mut config = auth_config(&db);
    config.bcrypt_cost = 10;
    config.throttle.max_failures_per_account = 100_000;
    config.throttle.max_failures_per_address = 100_000;
    let server = spawn_auth(config).await;
    let (flooder, mut bystander) =
        (client_from(server.addr, "127.0.0.2").await, client_from(server.addr, "127.0.0.3").await);
    sign_up(&mut bystander, "bystander@example.com").await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..32 {
        let (mut c, stop) = (flooder.clone(), stop.clone());
        flood.push(tokio::spawn(async move {
            let (mut checked, mut shed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match login(&mut c, "bystander@example.com", "a wrong guess").await {
                    Err(e) if testkit::reason(&e) == "OVERLOADED" => {
                        shed += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => {
                        assert_error(&e, Code::Unauthenticated, "INVALID_CREDENTIALS");
                        checked += 1;
                    }
                    Ok(_) => panic!("a wrong password logged in"),
                }
            }
            (checked, shed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the flood fills the queue first
    let (mut took, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        let started = Instant::now();
        match login(&mut bystander, "bystander@example.com", PASSWORD).await {
            Ok(_) => took.push(started.elapsed()),
            Err(e) => refused.push((testkit::reason(&e), started.elapsed())),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut checked, mut shed) = (0, 0);
    for task in flood {
        let (c, s) = task.await.unwrap();
        (checked, shed) = (checked + c, shed + s);
    }
    println!(
        "bystander's logins took {took:?}, refused: {refused:?}; the flooder had {checked} checks and {shed} OVERLOADED"
    );
    // One refusal in six is tolerated: on two cores shared with the database and other tests, a
    // check can take many times its time now and then. First come first served, all six are.
    assert!(refused.len() <= 1, "the other address was refused: {refused:?} (served in {took:?})");
    assert!(shed > 0, "the flood was more than the queue holds");
    assert!(checked > 0, "the flooding address is still served, in its turn");
}

#[tokio::test]
async fn sign_up_is_throttled_per_address() {
    let db = TestDatabase::new().await;
    let mut config = auth_config(&db);
    config.throttle.max_sign_ups_per_address = 3;
    let server = spawn_auth(config).await;
    let mut prober = client_from(server.addr, "127.0.0.2").await;
    sign_up(&mut prober, "a@example.com").await;
    sign_up(&mut prober, "b@example.com").await;
    // EMAIL_TAKEN counts too: probing which addresses have accounts is what this bounds.
    let taken = prober.sign_up(SignUpRequest { email: "a@example.com".into(), password: PASSWORD.into() }).await;
    assert_error(&taken.unwrap_err(), Code::AlreadyExists, "EMAIL_TAKEN");
    let refused = prober
        .sign_up(SignUpRequest { email: "c@example.com".into(), password: PASSWORD.into() })
        .await
        .expect_err("a fourth sign-up from the address in the window");
    assert_error(&refused, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
    assert!(refused.get_details_retry_info().and_then(|r| r.retry_delay).is_some(), "with a RetryInfo");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = 'c@example.com'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(users, 0, "nothing is written for a refused sign-up");
    // Another address is not affected.
    sign_up(&mut client_from(server.addr, "127.0.0.3").await, "d@example.com").await;
}

#[tokio::test]
async fn a_throttled_answer_takes_as_long_as_a_wrong_password() {
    let db = TestDatabase::new().await;
    let mut config = auth_config(&db);
    config.bcrypt_cost = 10;
    config.throttle.max_failures_per_account = 1;
    let server = spawn_auth(config).await;
    let mut auth = client(&server).await;
    sign_up(&mut auth, "slow@example.com").await;
    // The best of three of each, measured in pairs back to back, so that a busy machine (other
    // tests hashing at cost 12) slows both alike and does not decide the outcome.
    let (mut wrong, mut throttled) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        sqlx::query("DELETE FROM login_throttle").execute(&db.pool).await.unwrap();
        let start = Instant::now();
        let err = login(&mut auth, "slow@example.com", "guess").await.unwrap_err();
        assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
        wrong = wrong.min(start.elapsed());
        let start = Instant::now();
        let err = login(&mut auth, "slow@example.com", "guess").await.unwrap_err();
        assert_error(&err, Code::ResourceExhausted, "TOO_MANY_ATTEMPTS");
        throttled = throttled.min(start.elapsed());
    }
    assert!(throttled.as_secs_f64() > wrong.as_secs_f64() * 0.5, "throttled {throttled:?} vs wrong {wrong:?}");
}

#[tokio::test]
async fn a_login_storm_is_shed_quickly_and_cheap_calls_stay_fast() {
    let db = TestDatabase::new().await;
    let mut config = auth_config(&db);
    config.bcrypt_cost = 12;
    config.throttle.max_failures_per_address = 10_000;
    config.throttle.max_failures_per_account = 10_000;
    let server = spawn_auth(config).await;
    let mut auth = client(&server).await;
    let tokens = sign_up(&mut auth, "storm@example.com").await;

    let mut storm = Vec::new();
    for _ in 0..80 {
        let mut c = auth.clone();
        storm.push(tokio::spawn(async move {
            let start = Instant::now();
            let outcome = login(&mut c, "storm@example.com", "wrong password").await;
            (outcome.err().map(|s| (s.code(), testkit::reason(&s))), start.elapsed())
        }));
    }
    // Meanwhile, the cheap calls.
    let mut cheap = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        auth.get_current_user(authed(GetCurrentUserRequest {}, &tokens.access_token)).await.unwrap();
        cheap.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut shed = 0;
    for handle in storm {
        let (error, took) = handle.await.unwrap();
        if error == Some((Code::ResourceExhausted, "OVERLOADED".to_string())) {
            shed += 1;
            // Queueing all 80 at cost 12 would take about 10 s; a refusal comes within the 1 s wait.
            assert!(took < Duration::from_millis(3000), "refused quickly, not after queueing: {took:?}");
        }
    }
    assert!(shed > 0, "some of 80 concurrent cost-12 logins are shed");
    cheap.sort();
    // The 90th percentile of 20: on 2 cores with 80 cost-12 hashes queued, one or two samples can
    // meet a scheduler hiccup (seen once: 288 and 417 ms through PgBouncer, the rest under 120).
    let p90 = cheap[cheap.len() * 90 / 100 - 1];
    assert!(p90 < Duration::from_millis(250), "GetCurrentUser during the storm: {cheap:?}");
}

#[tokio::test]
async fn an_account_hashed_at_a_lower_cost_answers_as_slowly_as_an_unknown_address() {
    // After BCRYPT_COST is raised, accounts not yet upgraded still have cheaper hashes. Their
    // wrong-password answers must not come faster than an unknown address's (checked against a
    // dummy hash at the new cost), or timing tells which addresses have accounts.
    let db = TestDatabase::new().await;
    let old = spawn_auth(auth_config(&db)).await; // cost 4: about 1 ms
    sign_up(&mut client(&old).await, "old@example.com").await;
    old.stop().await.unwrap();
    let mut config = auth_config(&db);
    config.bcrypt_cost = 10; // about 60 ms
    let server = spawn_auth(config).await;
    let mut auth = client(&server).await;
    let _ = login(&mut auth, "warm-up@example.com", "guess").await;
    let median_of = |email: &'static str| {
        let mut auth = auth.clone();
        async move {
            let mut took = Vec::new();
            for _ in 0..4 {
                let started = Instant::now();
                let err = login(&mut auth, email, "guess").await.unwrap_err();
                assert_error(&err, Code::Unauthenticated, "INVALID_CREDENTIALS");
                took.push(started.elapsed());
            }
            took.sort();
            took[took.len() / 2]
        }
    };
    let (account, unknown) = (median_of("old@example.com").await, median_of("nobody@example.com").await);
    assert!(account * 2 >= unknown, "a cost-4 account answered in {account:?}, an unknown address in {unknown:?}");
}

#[tokio::test]
async fn a_hash_of_another_cost_is_upgraded_at_login() {
    let db = TestDatabase::new().await;
    let old = spawn_auth(auth_config(&db)).await; // cost 4
    sign_up(&mut client(&old).await, "upgrade@example.com").await;
    old.stop().await.unwrap();
    let mut config = auth_config(&db);
    config.bcrypt_cost = 5;
    let new = spawn_auth(config).await;
    login(&mut client(&new).await, "upgrade@example.com", PASSWORD).await.unwrap();
    let start = Instant::now();
    loop {
        let hash: String = sqlx::query_scalar("SELECT password_hash FROM users").fetch_one(&db.pool).await.unwrap();
        if hash.starts_with("$2b$05$") {
            assert!(bcrypt::verify(PASSWORD, &hash).unwrap());
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "hash never upgraded: {}", &hash[..7]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    login(&mut client(&new).await, "upgrade@example.com", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn concurrent_guesses_cannot_slip_past_the_limit() {
    let db = TestDatabase::new().await;
    let mut config = auth_config(&db);
    config.throttle.max_failures_per_account = 3;
    let server = spawn_auth(config).await;
    let mut auth = client(&server).await;
    sign_up(&mut auth, "target@example.com").await;
    let mut guesses = Vec::new();
    for i in 0..20 {
        let mut c = auth.clone();
        guesses.push(tokio::spawn(async move {
            login(&mut c, "target@example.com", &format!("guess {i}")).await.unwrap_err()
        }));
    }
    let mut checked = 0;
    for guess in guesses {
        let err = guess.await.unwrap();
        match testkit::reason(&err).as_str() {
            "INVALID_CREDENTIALS" => checked += 1,
            "TOO_MANY_ATTEMPTS" => {}
            other => panic!("unexpected {other}: {err:?}"),
        }
    }
    assert_eq!(checked, 3, "exactly the limit's worth of passwords were checked");
}
