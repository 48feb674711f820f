//! The verified caller of a request, and the tower layer that establishes it.
//!
//! `RequireCaller` wraps a whole gRPC service: it verifies the bearer token and checks that its
//! session is not revoked before the handler runs, and puts a `Caller` into the request's
//! extensions. Store functions take a `&Caller`, so
//! a query of a user's rows cannot be written without a verified caller.

use crate::revocation::Revocations;
use crate::token::{TokenError, TokenVerifier};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::server::NamedService;
use uuid::Uuid;

/// Who is calling, as proven by a verified access token. Only this module and token
/// verification create one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Uuid,
    pub session_id: Uuid,
}

impl Caller {
    /// The caller that `RequireCaller` established for this request.
    pub fn of<T>(request: &tonic::Request<T>, domain: &str) -> Result<Caller, Status> {
        // Absent only if the service was mounted without the layer: refuse rather than serve.
        request.extensions().get::<Caller>().copied().ok_or_else(|| TokenError::Missing.into_status(domain))
    }
}

/// The token of an `authorization: Bearer <token>` value.
pub fn bearer_token(value: Option<&str>) -> Result<&str, TokenError> {
    let value = value.ok_or(TokenError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Invalid);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    Ok(token)
}

/// Verifies a request's bearer token and returns its caller.
pub async fn authenticate(verifier: &TokenVerifier, authorization: Option<&str>) -> Result<Caller, TokenError> {
    let token = bearer_token(authorization)?;
    let claims = verifier.verify(token).await?;
    Ok(Caller { user_id: claims.sub, session_id: claims.sid })
}

/// Token verification plus the revocation check: everything that decides who a caller is.
pub struct Authenticator {
    pub verifier: TokenVerifier,
    pub revocations: Arc<Revocations>,
}

impl Authenticator {
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, TokenError> {
        let caller = authenticate(&self.verifier, authorization).await?;
        self.revocations.check(caller.session_id, caller.user_id).await?;
        Ok(caller)
    }
}

/// Wraps a gRPC service so that every call carries a verified `Caller`, or is refused with
/// UNAUTHENTICATED before the handler runs.
#[derive(Clone)]
pub struct RequireCaller<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
    domain: &'static str,
}

impl<S> RequireCaller<S> {
    pub fn new(inner: S, authenticator: Arc<Authenticator>, domain: &'static str) -> Self {
        Self { inner, authenticator, domain }
    }
}

impl<S: NamedService> NamedService for RequireCaller<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for RequireCaller<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready goes into the future; a fresh clone stays behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        let domain = self.domain;
        Box::pin(async move {
            let authorization =
                request.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("invalid"));
            match authenticator.authenticate(authorization).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(e) => Ok(e.into_status(domain).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_values() {
        assert_eq!(bearer_token(Some("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer_token(Some("bearer  abc ")).unwrap(), "abc");
        assert!(matches!(bearer_token(None), Err(TokenError::Missing)));
        assert!(matches!(bearer_token(Some("Bearer ")), Err(TokenError::Invalid | TokenError::Missing)));
        assert!(matches!(bearer_token(Some("Basic abc")), Err(TokenError::Invalid)));
        assert!(matches!(bearer_token(Some("abc")), Err(TokenError::Invalid)));
    }
}
