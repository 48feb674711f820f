//! The verified caller of a request: a bearer token verified, and its session checked against
//! the revocation list. Store functions take a `&Caller`, so a query of a user's rows cannot be
//! written without one; `server::require_caller` establishes it for every call of a service.

use super::revocation::Revocations;
use super::token::{TokenError, TokenVerifier};
use std::sync::Arc;
use uuid::Uuid;

/// Who is calling, as proven by a verified access token. Only this module and token
/// verification create one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The user (`sub` of the token), a UUID.
    pub user_id: Uuid,
    /// The session (`sid` of the token), a UUID: what revocation ends.
    pub session_id: Uuid,
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
    /// Checks the token itself: signature, algorithm, claims, expiry.
    pub verifier: TokenVerifier,
    /// Checks that the token's session has not been revoked.
    pub revocations: Arc<Revocations>,
}

impl Authenticator {
    /// The caller of an `authorization` metadata value (`Bearer <token>`): `Missing`, `Invalid`,
    /// `Expired` or `Revoked` when refused, `Database` when the key or the session could not be
    /// looked up.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, TokenError> {
        let caller = authenticate(&self.verifier, authorization).await?;
        self.revocations.check(caller.session_id, caller.user_id).await?;
        Ok(caller)
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
