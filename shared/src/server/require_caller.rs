//! The tower layer that gives every call of a service a verified `Caller`, or refuses it with
//! UNAUTHENTICATED before the handler runs (or RESOURCE_EXHAUSTED `QUOTA_EXCEEDED` when the
//! caller is over its call rate, `call_rate`), and the handlers' way to read it.

use crate::access::caller::{Authenticator, Caller};
use crate::access::token::TokenError;
use crate::server::call_rate::CallRate;
use crate::server::status::quota_exceeded;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::server::NamedService;
use tower_http::auth::{AsyncAuthorizeRequest, AsyncRequireAuthorization};

/// The caller that `RequireCaller` established for this request; UNAUTHENTICATED (MISSING_TOKEN)
/// in `domain` if the service was mounted without the layer, rather than serve.
pub fn caller_of<T>(request: &tonic::Request<T>, domain: &str) -> Result<Caller, Status> {
    request.extensions().get::<Caller>().copied().ok_or_else(|| super::status::token_error(domain, TokenError::Missing))
}

/// Wraps a gRPC service so that every call carries a verified `Caller`, or is refused with
/// UNAUTHENTICATED before the handler runs: tower-http's `AsyncRequireAuthorization` with
/// `VerifyBearer`, plus the service's name, which tonic's router needs and tower-http's
/// wrapper does not carry.
#[derive(Clone)]
pub struct RequireCaller<S>(AsyncRequireAuthorization<S, VerifyBearer>);

impl<S> RequireCaller<S> {
    /// `inner` behind `authenticator`, each caller held to `rate` when given; refusals carry
    /// ErrorInfo `domain`.
    pub fn new(inner: S, authenticator: Arc<Authenticator>, rate: Option<Arc<CallRate>>, domain: &'static str) -> Self {
        Self(AsyncRequireAuthorization::new(inner, VerifyBearer { authenticator, rate, domain }))
    }
}

impl<S: NamedService> NamedService for RequireCaller<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for RequireCaller<S>
where
    AsyncRequireAuthorization<S, VerifyBearer>: tower::Service<http::Request<B>>,
{
    type Response = <AsyncRequireAuthorization<S, VerifyBearer> as tower::Service<http::Request<B>>>::Response;
    type Error = <AsyncRequireAuthorization<S, VerifyBearer> as tower::Service<http::Request<B>>>::Error;
    type Future = <AsyncRequireAuthorization<S, VerifyBearer> as tower::Service<http::Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.0.call(request)
    }
}

/// Checks the request's `authorization: Bearer <token>` with the authenticator: on success the
/// `Caller` goes into the request's extensions (and its user id into the call's span); otherwise
/// the answer is UNAUTHENTICATED with the token error's reason.
#[derive(Clone)]
pub struct VerifyBearer {
    authenticator: Arc<Authenticator>,
    rate: Option<Arc<CallRate>>,
    domain: &'static str,
}

impl<B: Send + 'static> AsyncAuthorizeRequest<B> for VerifyBearer {
    type RequestBody = B;
    type ResponseBody = tonic::body::Body;
    type Future = BoxFuture<'static, Result<http::Request<B>, http::Response<tonic::body::Body>>>;

    fn authorize(&mut self, mut request: http::Request<B>) -> Self::Future {
        let authenticator = self.authenticator.clone();
        let rate = self.rate.clone();
        let domain = self.domain;
        Box::pin(async move {
            let authorization =
                request.headers().get(http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("invalid"));
            match authenticator.authenticate(authorization).await {
                Ok(caller) => {
                    tracing::Span::current().record("user_id", tracing::field::display(caller.user_id));
                    if let Some(rate) = &rate
                        && let Err(retry_after) = rate.check(caller.user_id)
                    {
                        let per_second = rate.config().per_second;
                        let description = format!(
                            "at most {per_second} calls per second per user on one server (USER_CALLS_PER_SECOND); \
                             retry in {} ms",
                            retry_after.as_millis().max(1)
                        );
                        let subject = format!("user:{}", caller.user_id);
                        return Err(quota_exceeded(domain, subject, description, Some(retry_after)).into_http());
                    }
                    request.extensions_mut().insert(caller);
                    Ok(request)
                }
                Err(e) => Err(super::status::token_error(domain, e).into_http()),
            }
        })
    }
}
