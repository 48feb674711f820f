//! auth-service: accounts, sessions and tokens (todo.auth.v1.AuthService).
//!
//! A library with a thin `main`: `serve` takes a bound listener and a shutdown future, so the
//! binary passes a signal and the tests pass a oneshot.

pub mod client_seen;
pub mod config;
pub mod domain;
pub mod error;
pub mod housekeeping;
pub mod passwords;
pub mod service;
pub mod sessions;
pub mod sessions_cli;
pub mod signing_key;
pub mod store;
pub mod stored_emails;
pub mod throttle;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;
use todo_proto::auth::v1::auth_service_server::AuthServiceServer;
use todo_shared::access::keyring::KeyRing;
use todo_shared::access::token::TokenVerifier;
use tokio::net::TcpListener;

pub use config::AuthConfig;

/// The fully qualified service name, as reported by health.
pub const SERVICE_NAME: &str = "todo.auth.v1.AuthService";

/// Runs auth-service on `listener` until `shutdown` resolves and in-flight calls have finished.
pub async fn serve(
    listener: TcpListener,
    config: AuthConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tracing::info!(db = ?config.db, "starting auth-service");
    let pool = todo_shared::database::pool(&config.db)?;
    let key = match &config.signing_key_file {
        Some(path) => signing_key::TokenSigningKey::from_file(path)?,
        None => {
            tracing::warn!(
                "SIGNING_KEY_FILE is not set: signing with a fresh random key made for this run \
                 (fine for development; in production give a key file so every restart and instance is planned)"
            );
            signing_key::TokenSigningKey::generate()?
        }
    };

    let ephemeral = key.ephemeral;
    let issuer = Arc::new(tokens::TokenIssuer::new(key, config.token.clone(), config.token.access_token_ttl));
    let keyring = Arc::new(KeyRing::new(pool.clone()));
    let hasher = passwords::PasswordHasher::new(config.bcrypt_cost).await?;
    let extras = todo_shared::server::serve::ServeExtras {
        drain: config.drain_timeout,
        endpoint: config.endpoint.clone(),
        gauges: password_gauges(&hasher),
        cors: config.cors_allowed_origins.clone(),
    };
    let api = service::AuthApi {
        pool: pool.clone(),
        hasher,
        issuer: issuer.clone(),
        verifier: Arc::new(TokenVerifier::new(keyring.clone(), &config.token)),
        refresh_ttl: config.refresh_token_ttl,
        session_max_lifetime: config.session_max_lifetime,
        session_idle_timeout: config.session_idle_timeout,
        refresh_reuse_grace: config.refresh_reuse_grace,
        throttle: throttle::LoginThrottle::new(pool.clone(), config.throttle.clone()),
    };
    let pruner = housekeeping::spawn(pool.clone(), config.throttle.window);
    let routes = tonic::service::Routes::new(
        AuthServiceServer::new(api).max_decoding_message_size(todo_shared::server::call_limits::MAX_REQUEST_BYTES),
    );
    // Waits for the database as long as it takes; only a retired key ends the wait.
    let startup = {
        let (pool, db, keyring, issuer) = (pool.clone(), config.db.clone(), keyring.clone(), issuer.clone());
        Box::pin(async move {
            todo_shared::database::migrate_when_ready(&pool, &db).await?;
            // Waits for the database like the steps around it; any other error is logged, not
            // fatal: what a failed pass leaves, the next start does.
            let normalising = todo_shared::database::waiting::until_database_ready(
                &pool,
                "normalising stored email addresses",
                || async { stored_emails::normalise(&pool).await.map_err(anyhow::Error::new) },
            );
            match normalising.await {
                Ok(done) if done == stored_emails::Normalised::default() => {}
                Ok(done) => {
                    tracing::info!(
                        rewritten = done.rewritten,
                        conflicts = done.conflicts,
                        "stored email addresses normalised"
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not normalise stored email addresses; the next start will")
                }
            }
            let key = issuer.key();
            todo_shared::database::waiting::until_database_ready(&pool, "registering the signing key", || {
                key.register(&pool)
            })
            .await?;
            tracing::info!(kid = %key.kid, "signing access tokens");
            // Keys also load on first use: a database that vanished just now is no reason to stop.
            if let Err(e) = keyring.reload().await {
                tracing::warn!(error = %e, "could not load verification keys yet; will retry on first use");
            }
            Ok(())
        })
    };
    let served =
        todo_shared::server::serve::serve(listener, routes, pool.clone(), &[SERVICE_NAME], extras, startup, shutdown)
            .await;
    pruner.abort();
    served?;

    if ephemeral {
        // Nobody will sign with this key again; it verifies until its last token expires.
        if let Err(e) = issuer.key().retire_after(&pool, config.token.access_token_ttl).await {
            tracing::warn!(error = %e, "could not schedule the retirement of the signing key");
        }
    }
    pool.close().await;
    Ok(())
}

/// The bcrypt queue, read at each scrape of `/metrics`.
fn password_gauges(hasher: &passwords::PasswordHasher) -> Vec<todo_shared::server::metrics::SampledGauge> {
    use todo_shared::server::metrics::SampledGauge;
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let (queued, running, max) = (hasher.clone(), hasher.clone(), as_i64(hasher.max_queue_depth()));
    vec![
        SampledGauge::new(
            "auth_password_hash_queue_depth",
            "Password checks (bcrypt) waiting for a free hashing slot",
            move || as_i64(queued.queue_depth()),
        ),
        SampledGauge::new(
            "auth_password_hash_queue_capacity",
            "The most password checks that may wait; beyond it calls get RESOURCE_EXHAUSTED OVERLOADED",
            move || max,
        ),
        SampledGauge::new(
            "auth_password_hash_in_progress",
            "Password checks (bcrypt) running now, at most one per core",
            move || as_i64(running.in_progress()),
        ),
    ]
}
