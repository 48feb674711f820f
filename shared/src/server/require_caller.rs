//! The tower layer that gives every call of a service a verified `Caller`, or refuses it with
//! UNAUTHENTICATED before the handler runs, and the handlers' way to read it.

use crate::access::caller::{Authenticator, Caller};
use crate::access::token::TokenError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::server::NamedService;

/// The caller that `RequireCaller` established for this request; UNAUTHENTICATED (MISSING_TOKEN)
/// in `domain` if the service was mounted without the layer, rather than serve.
pub fn caller_of<T>(request: &tonic::Request<T>, domain: &str) -> Result<Caller, Status> {
    request.extensions().get::<Caller>().copied().ok_or_else(|| super::status::token_error(domain, TokenError::Missing))
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
    /// `inner` behind `authenticator`; refusals carry ErrorInfo `domain`.
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
                    tracing::Span::current().record("user_id", tracing::field::display(caller.user_id));
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(e) => Ok(super::status::token_error(domain, e).into_http()),
            }
        })
    }
}
