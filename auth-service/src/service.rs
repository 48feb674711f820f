//! The AuthService RPCs: parse the request, check, run the store functions, answer.

use crate::client_seen::ClientSeen;
use crate::domain::{Email, Password, PasswordAttempt};
use crate::error::{AuthError, email_taken_or};
use crate::passwords::PasswordHasher;
use crate::store::{self, RevokeReason, UserRow};
use crate::throttle::{AttemptKeys, LoginThrottle};
use crate::tokens::{NewRefreshToken, TokenIssuer, hash_refresh_token, refresh_expiry};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use todo_proto::auth::v1::auth_service_server::AuthService;
use todo_proto::auth::v1::*;
use todo_shared::Caller;
use todo_shared::access::caller::bearer_token;
use todo_shared::access::token::{AccessClaims, TokenError, TokenVerifier};
use todo_shared::database::{Db, Tx};
use todo_shared::server::proto_time::{optional_timestamp, timestamp};
use todo_shared::server::status::{FieldViolation, all_valid};
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// How many extra pairs one refresh token may yield within the grace window (three tabs).
const MAX_GRACE_EXCHANGES: i32 = 2;

pub struct AuthApi {
    pub(crate) pool: Db,
    pub(crate) hasher: PasswordHasher,
    pub(crate) issuer: Arc<TokenIssuer>,
    pub(crate) verifier: Arc<TokenVerifier>,
    pub(crate) refresh_ttl: Duration,
    /// `SESSION_MAX_LIFETIME_SECONDS` and `SESSION_IDLE_TIMEOUT_SECONDS`.
    pub(crate) session_max_lifetime: Duration,
    pub(crate) session_idle_timeout: Duration,
    pub(crate) refresh_reuse_grace: Duration,
    pub(crate) throttle: LoginThrottle,
}

fn user_message(user: &UserRow) -> User {
    User {
        id: user.id.to_string(),
        email: user.email.clone(),
        create_time: optional_timestamp(user.created_at),
        update_time: optional_timestamp(user.updated_at),
    }
}

/// A password that matched, and in which form its hash was made.
#[derive(Clone, Copy, Debug)]
struct PasswordMatch {
    /// The hash is of the password as typed, not of its NFKC form (made before passwords were
    /// normalised): login replaces it.
    stored_as_typed: bool,
}

impl AuthApi {
    /// Verifies the access token and checks that its session and its signing key are still
    /// live: auth-service has the database at hand, so its own calls see a revocation or a key's
    /// retirement at once.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, AuthError> {
        let header = request.metadata().get("authorization").map(|v| v.to_str().unwrap_or("invalid"));
        Ok(self.verified_caller(bearer_token(header)?).await?.0)
    }

    /// The caller of `token` and its claims, if the token verifies and its session and key are
    /// live (one database round trip).
    async fn verified_caller(&self, token: &str) -> Result<(Caller, AccessClaims), AuthError> {
        let (claims, kid) = self.verifier.verify_with_kid(token).await?;
        let caller = Caller { user_id: claims.sub, session_id: claims.sid };
        tracing::Span::current().record("user_id", tracing::field::display(caller.user_id));
        let standing = store::token_standing(&self.pool, &caller, &kid).await?;
        if !standing.key_live {
            return Err(TokenError::Invalid.into());
        }
        if !standing.session_live {
            return Err(TokenError::Revoked.into());
        }
        Ok((caller, claims))
    }

    /// A password check under the brute-force throttle. A throttled attempt still pays for a
    /// bcrypt check, so that its answer takes as long as any other.
    /// The attempt is checked in NFKC (as new passwords are stored), then, if it differs, as
    /// typed: a hash made before passwords were normalised keeps working, and the answer says
    /// so, for login to store the normalised form. Unknown accounts get both checks too.
    async fn check_password(
        &self,
        keys: &AttemptKeys,
        password: &str,
        hash: Option<&str>,
    ) -> Result<PasswordMatch, AuthError> {
        let started = std::time::Instant::now();
        let normalized = crate::domain::nfkc(password);
        // An attempt not in NFKC form is checked twice below (both forms).
        let checks = if normalized == password { 1 } else { 2 };
        if let Some(retry_after) = self.throttle.attempt(keys).await? {
            // As long as a wrong password takes, but without a hashing slot: an attacker over
            // the limit must not crowd out the logins of everyone else.
            self.hasher.pace(started, checks).await;
            return Err(AuthError::TooManyAttempts { retry_after });
        }
        let matched = if self.hasher.verify(&normalized, hash, keys.client()).await? {
            Some(PasswordMatch { stored_as_typed: false })
        } else if normalized != password && self.hasher.verify(password, hash, keys.client()).await? {
            Some(PasswordMatch { stored_as_typed: true })
        } else {
            None
        };
        match matched {
            Some(matched) => {
                self.throttle.succeeded(keys).await?;
                Ok(matched)
            }
            None => Err(AuthError::InvalidCredentials),
        }
    }

    /// Opens a session for `user_id` inside `tx` and returns its first token pair.
    async fn open_session(&self, tx: &mut Tx, user_id: Uuid, seen: &ClientSeen) -> Result<TokenPair, AuthError> {
        let session_id = store::create_session(&mut *tx, user_id, seen).await?;
        let refresh = NewRefreshToken::generate();
        let ttl = self.refresh_ttl.min(self.session_max_lifetime);
        store::insert_refresh_token(&mut *tx, session_id, &refresh.hash, refresh_expiry(ttl)).await?;
        Ok(self.issuer.pair(user_id, session_id, &refresh)?)
    }

    /// Re-hashes a password whose stored hash has another cost than the configured one, or was
    /// made of the password as typed before passwords were normalised (`stored_as_typed`); the
    /// new hash is of the NFKC form. Runs after the reply, so the login that triggers it is not
    /// slowed down.
    /// The write only lands if the stored hash is still the one that was verified, so that it
    /// can never undo a password change made in between.
    fn upgrade_hash_if_needed(
        &self,
        user_id: Uuid,
        stored_hash: &str,
        password: &str,
        matched: PasswordMatch,
        client: &str,
    ) {
        let stored_cost = crate::passwords::cost_of(stored_hash);
        if stored_cost == Some(self.hasher.cost()) && !matched.stored_as_typed {
            return;
        }
        let password = crate::domain::nfkc(password);
        if password.len() > crate::domain::Password::MAX_BYTES {
            // A password stored as typed that grows past bcrypt's 72 bytes in NFKC form: a hash
            // of that form would be cut, and lock its owner out. It stays as it is.
            return;
        }
        let (pool, hasher) = (self.pool.clone(), self.hasher.clone());
        let (stored_hash, client) = (stored_hash.to_owned(), client.to_owned());
        tokio::spawn(async move {
            let upgraded = match hasher.hash(&password, &client).await {
                Ok(hash) => {
                    store::replace_password_hash(&pool, user_id, &stored_hash, &hash).await.map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = upgraded {
                tracing::warn!(error = %e, %user_id, "could not upgrade a password hash");
            }
        });
    }

    async fn sign_up(&self, req: SignUpRequest, seen: ClientSeen) -> Result<SignUpResponse, AuthError> {
        let client = seen.address;
        let email = Email::parse("email", &req.email);
        let password = Password::parse("password", req.password);
        all_valid([email.as_ref().err(), password.as_ref().err()])?;
        let (email, password) = (email?, password?);
        password.check_not_guessable("password", email.as_str())?;
        // Counted before the hash: an address over its limit costs no bcrypt slot.
        if let Some(retry_after) = self.throttle.sign_up_attempt(client).await? {
            return Err(AuthError::TooManySignUps { retry_after });
        }
        let hash = self.hasher.hash(password.expose(), &crate::throttle::client_key(client)).await?;
        let mut tx = self.pool.begin().await?;
        let user = store::insert_user(&mut tx, email.as_str(), &hash).await.map_err(email_taken_or)?;
        let tokens = self.open_session(&mut tx, user.id, &seen).await?;
        tx.commit().await?;
        tracing::info!(user_id = %user.id, "signed up");
        Ok(SignUpResponse { user: Some(user_message(&user)), tokens: Some(tokens) })
    }

    async fn login(&self, req: LoginRequest, seen: ClientSeen) -> Result<LoginResponse, AuthError> {
        let client = seen.address;
        let email_given = req.email.trim().is_empty().then(|| FieldViolation::new("email", "is required"));
        let password = PasswordAttempt::parse("password", req.password);
        all_valid([email_given.as_ref(), password.as_ref().err()])?;
        let password = password?;
        let email = Email::normalize_for_lookup(&req.email);
        // An address no account can have (too long, control characters) is looked up nowhere,
        // but still answered after a password check, like any unknown address.
        let usable = email.chars().count() <= Email::MAX_CHARS && !email.chars().any(char::is_control);
        let email = if usable { email } else { "<unusable address>".to_owned() };
        let credentials = if usable { store::credentials_by_email(&self.pool, &email).await? } else { None };
        let keys = AttemptKeys::new(&email, client);
        let matched = self
            .check_password(&keys, password.expose(), credentials.as_ref().map(|c| c.password_hash.as_str()))
            .await?;
        let credentials = credentials.ok_or(AuthError::InvalidCredentials)?;
        let mut tx = self.pool.begin().await?;
        // The hash was checked outside any transaction, a bcrypt's time ago: if a password change
        // (or a deletion) committed meanwhile, the old password must not open a session that the
        // change's revocation has already missed. The share lock makes a change in flight finish
        // first, and keeps the next one waiting until this session exists for it to revoke. A
        // hash upgraded by a concurrent login refuses this one too: rare, and a retry succeeds.
        if store::lock_password_hash(&mut tx, credentials.id).await?.as_deref() != Some(&credentials.password_hash) {
            return Err(AuthError::InvalidCredentials);
        }
        let tokens = self.open_session(&mut tx, credentials.id, &seen).await?;
        tx.commit().await?;
        self.upgrade_hash_if_needed(
            credentials.id,
            &credentials.password_hash,
            password.expose(),
            matched,
            keys.client(),
        );
        Ok(LoginResponse { user: Some(user_message(&credentials.user())), tokens: Some(tokens) })
    }

    async fn refresh_token(
        &self,
        req: RefreshTokenRequest,
        seen: ClientSeen,
    ) -> Result<RefreshTokenResponse, AuthError> {
        if req.refresh_token.is_empty() {
            return Err(FieldViolation::new("refresh_token", "is required").into());
        }
        let hash = hash_refresh_token(&req.refresh_token);
        let mut tx = self.pool.begin().await?;
        let Some(state) = store::lock_refresh_token(&mut tx, &hash).await? else {
            return Err(TokenError::Invalid.into());
        };
        if state.session_revoked {
            return Err(TokenError::Revoked.into());
        }
        // However often it is used, a session ends at its lifetime, and after a time unused
        // (ASVS 5.0 V7.3.1, V7.3.2). It is revoked too, so that its access tokens stop at once.
        // Checked before the token's own expiry, which is capped at the session's end and would
        // otherwise answer first, without revoking.
        let age = (state.now - state.session_created_at).to_std().unwrap_or_default();
        let unused = (state.now - state.issued_at).to_std().unwrap_or_default();
        if age >= self.session_max_lifetime || unused >= self.session_idle_timeout {
            store::revoke_session(&mut tx, state.session_id, RevokeReason::SessionExpired).await?;
            tx.commit().await?;
            tracing::info!(session_id = %state.session_id, "session expired");
            return Err(AuthError::SessionExpired { idle: age < self.session_max_lifetime });
        }
        if state.expires_at <= state.now {
            return Err(TokenError::Expired.into());
        }
        let grace = chrono::Duration::from_std(self.refresh_reuse_grace).unwrap_or_default();
        match state.spent_at {
            // Within the grace window a second refresh of the same token is a client's
            // concurrent refresh (two tabs), not a thief: it gets a pair of its own. Only a few
            // such exchanges per token, so that the window cannot mint pairs without end.
            Some(spent_at) if state.now - spent_at <= grace && state.grace_exchanges < MAX_GRACE_EXCHANGES => {
                store::count_grace_exchange(&mut tx, &hash).await?;
            }
            Some(_) => {
                store::revoke_session(&mut tx, state.session_id, RevokeReason::RefreshTokenReused).await?;
                tx.commit().await?;
                tracing::warn!(session_id = %state.session_id, "refresh token reused: session revoked");
                return Err(AuthError::RefreshTokenReused);
            }
            None => store::spend_refresh_token(&mut tx, &hash).await?,
        }
        let refresh = NewRefreshToken::generate();
        store::touch_session(&mut tx, state.session_id, &seen).await?;
        // A refresh token never outlives its session (both in the database's clock).
        let span = |d: Duration| chrono::Duration::from_std(d).expect("lifetimes are bounded by configuration");
        let expires_at =
            (state.now + span(self.refresh_ttl)).min(state.session_created_at + span(self.session_max_lifetime));
        store::insert_refresh_token(&mut tx, state.session_id, &refresh.hash, expires_at).await?;
        tx.commit().await?;
        let tokens = self.issuer.pair(state.user_id, state.session_id, &refresh)?;
        Ok(RefreshTokenResponse { tokens: Some(tokens) })
    }

    async fn logout(&self, req: LogoutRequest) -> Result<LogoutResponse, AuthError> {
        if req.refresh_token.is_empty() {
            return Err(FieldViolation::new("refresh_token", "is required").into());
        }
        // Unknown or already revoked: nothing to do, and nothing to tell an attacker.
        store::revoke_session_of_refresh_token(&self.pool, &hash_refresh_token(&req.refresh_token)).await?;
        Ok(LogoutResponse {})
    }

    async fn logout_all(&self, caller: Caller) -> Result<LogoutAllResponse, AuthError> {
        let revoked = store::revoke_sessions_of(&self.pool, &caller, RevokeReason::LogoutAll).await?;
        Ok(LogoutAllResponse { revoked_sessions: i32::try_from(revoked).unwrap_or(i32::MAX) })
    }

    async fn get_current_user(&self, caller: Caller) -> Result<GetCurrentUserResponse, AuthError> {
        let user = store::user_of(&self.pool, &caller).await?.ok_or(TokenError::Revoked)?;
        Ok(GetCurrentUserResponse { user: Some(user_message(&user)) })
    }

    async fn change_password(
        &self,
        caller: Caller,
        req: ChangePasswordRequest,
        seen: ClientSeen,
    ) -> Result<ChangePasswordResponse, AuthError> {
        let client = seen.address;
        let current = PasswordAttempt::parse("current_password", req.current_password);
        let new = Password::parse("new_password", req.new_password);
        all_valid([current.as_ref().err(), new.as_ref().err()])?;
        let (current, new) = (current?, new?);
        let credentials = store::credentials_of(&self.pool, &caller).await?.ok_or(TokenError::Revoked)?;
        new.check_not_guessable("new_password", &credentials.email)?;
        let keys = AttemptKeys::new(&credentials.email, client);
        self.check_password(&keys, current.expose(), Some(&credentials.password_hash)).await?;
        let hash = self.hasher.hash(new.expose(), keys.client()).await?;
        let mut tx = self.pool.begin().await?;
        store::set_password_hash(&mut tx, &caller, &hash).await?;
        // Every existing session ends, the caller's own included: the new pair starts a new one.
        store::revoke_sessions_of(&mut tx, &caller, RevokeReason::PasswordChanged).await?;
        let tokens = self.open_session(&mut tx, caller.user_id, &seen).await?;
        tx.commit().await?;
        tracing::info!(user_id = %caller.user_id, "password changed; other sessions revoked");
        Ok(ChangePasswordResponse { tokens: Some(tokens) })
    }

    async fn delete_account(
        &self,
        caller: Caller,
        req: DeleteAccountRequest,
        client: Option<IpAddr>,
    ) -> Result<DeleteAccountResponse, AuthError> {
        let password = PasswordAttempt::parse("password", req.password)?;
        let credentials = store::credentials_of(&self.pool, &caller).await?.ok_or(TokenError::Revoked)?;
        let keys = AttemptKeys::new(&credentials.email, client);
        self.check_password(&keys, password.expose(), Some(&credentials.password_hash)).await?;
        store::delete_user(&self.pool, &caller).await?;
        tracing::info!(user_id = %caller.user_id, "account deleted");
        Ok(DeleteAccountResponse {})
    }

    async fn get_jwks(&self) -> Result<GetJwksResponse, AuthError> {
        let keys = todo_shared::access::keyring::active_keys(&self.pool)
            .await?
            .into_iter()
            .map(|row| Jwk {
                kid: row.kid,
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                alg: "EdDSA".into(),
                r#use: "sig".into(),
                x: URL_SAFE_NO_PAD.encode(&row.public_key),
            })
            .collect();
        Ok(GetJwksResponse { keys })
    }

    async fn validate_token(&self, req: ValidateTokenRequest) -> Result<ValidateTokenResponse, AuthError> {
        if req.access_token.is_empty() {
            return Err(FieldViolation::new("access_token", "is required").into());
        }
        let (_, claims) = self.verified_caller(&req.access_token).await?;
        let expire_time = chrono::DateTime::from_timestamp(claims.exp, 0).map(timestamp);
        Ok(ValidateTokenResponse { user_id: claims.sub.to_string(), session_id: claims.sid.to_string(), expire_time })
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn sign_up(&self, request: Request<SignUpRequest>) -> Result<Response<SignUpResponse>, Status> {
        let seen = ClientSeen::of(&request);
        Ok(Response::new(AuthApi::sign_up(self, request.into_inner(), seen).await?))
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        let seen = ClientSeen::of(&request);
        Ok(Response::new(AuthApi::login(self, request.into_inner(), seen).await?))
    }

    async fn refresh_token(
        &self,
        request: Request<RefreshTokenRequest>,
    ) -> Result<Response<RefreshTokenResponse>, Status> {
        let seen = ClientSeen::of(&request);
        Ok(Response::new(AuthApi::refresh_token(self, request.into_inner(), seen).await?))
    }

    async fn logout(&self, request: Request<LogoutRequest>) -> Result<Response<LogoutResponse>, Status> {
        Ok(Response::new(AuthApi::logout(self, request.into_inner()).await?))
    }

    async fn logout_all(&self, request: Request<LogoutAllRequest>) -> Result<Response<LogoutAllResponse>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(AuthApi::logout_all(self, caller).await?))
    }

    async fn get_current_user(
        &self,
        request: Request<GetCurrentUserRequest>,
    ) -> Result<Response<GetCurrentUserResponse>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(AuthApi::get_current_user(self, caller).await?))
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let caller = self.caller(&request).await?;
        let seen = ClientSeen::of(&request);
        Ok(Response::new(AuthApi::change_password(self, caller, request.into_inner(), seen).await?))
    }

    async fn delete_account(
        &self,
        request: Request<DeleteAccountRequest>,
    ) -> Result<Response<DeleteAccountResponse>, Status> {
        let caller = self.caller(&request).await?;
        let client = request.remote_addr().map(|a| a.ip());
        Ok(Response::new(AuthApi::delete_account(self, caller, request.into_inner(), client).await?))
    }

    async fn get_jwks(&self, _request: Request<GetJwksRequest>) -> Result<Response<GetJwksResponse>, Status> {
        Ok(Response::new(AuthApi::get_jwks(self).await?))
    }

    async fn validate_token(
        &self,
        request: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        Ok(Response::new(AuthApi::validate_token(self, request.into_inner()).await?))
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(AuthApi::list_sessions(self, caller).await?))
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(AuthApi::revoke_session(self, caller, request.into_inner()).await?))
    }

    async fn revoke_other_sessions(
        &self,
        request: Request<RevokeOtherSessionsRequest>,
    ) -> Result<Response<RevokeOtherSessionsResponse>, Status> {
        let caller = self.caller(&request).await?;
        Ok(Response::new(AuthApi::revoke_other_sessions(self, caller).await?))
    }
}
