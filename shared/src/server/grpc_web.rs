//! gRPC-Web, so that browser apps can call both services without a proxy: tonic-web translates
//! gRPC-Web requests (HTTP/1.1 or HTTP/2) into gRPC, and a CORS layer answers browsers' preflight
//! requests for the origins listed in `CORS_ALLOWED_ORIGINS`. Native gRPC passes through untouched.

use crate::env::{ConfigError, Env, optional};
use http::{HeaderName, HeaderValue, Method};
use std::time::Duration;
use tonic_web::GrpcWebLayer;
use tower::layer::util::{Identity, Stack};
use tower::util::Either;
use tower_http::cors::{AllowOrigin, CorsLayer};

const VAR: &str = "CORS_ALLOWED_ORIGINS";

/// The exact origins (`scheme://host[:port]`) whose pages a browser lets call the services.
/// Empty: no CORS headers at all, so browsers refuse cross-origin calls; gRPC-Web clients that are
/// not browsers (and pages served from the services' own origin) are not affected by CORS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorsOrigins(Vec<String>);

impl CorsOrigins {
    /// The variable `from_env` reads, for `--help`.
    pub const SETTINGS: &[crate::env::Setting] = &[crate::env::Setting {
        var: VAR,
        default: "(unset: none)",
        meaning: "comma-separated browser origins (scheme://host[:port], exact) allowed to call over gRPC-Web",
    }];

    /// Reads the comma-separated `CORS_ALLOWED_ORIGINS`; unset or empty means none.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        optional(env, VAR).map_or(Ok(Self::default()), |list| Self::parse(&list).map_err(|e| ConfigError::new(VAR, e)))
    }

    /// Parses a comma-separated list such as `https://app.example.com, http://localhost:5173`.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',').map(str::trim).filter(|o| !o.is_empty()).map(origin).collect::<Result<_, _>>().map(Self)
    }

    /// True when no origin is allowed (no CORS headers at all).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One origin as a browser sends it in `Origin`: lower-case scheme and host, no path, no slash at
/// the end. Anything else could never match, so it is refused rather than silently ignored.
fn origin(raw: &str) -> Result<String, String> {
    let fail =
        || format!("{raw:?} is not an origin; give scheme, host and optional port, such as https://app.example.com");
    if raw == "*" {
        return Err("\"*\" is not allowed: list the exact origins of the apps that may call".into());
    }
    let lower = raw.to_ascii_lowercase();
    let (scheme, authority) = lower.split_once("://").ok_or_else(fail)?;
    let valid = matches!(scheme, "http" | "https")
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && authority.parse::<http::uri::Authority>().is_ok();
    if valid { Ok(lower) } else { Err(fail()) }
}

/// CORS outside (tonic-web answers a preflight OPTIONS with 400), gRPC-Web translation inside.
/// With no origins there is no CORS layer at all: no response carries a CORS header.
pub fn layer(origins: &CorsOrigins) -> Stack<GrpcWebLayer, Either<CorsLayer, Identity>> {
    let cors = (!origins.is_empty()).then(|| cors_layer(origins));
    Stack::new(GrpcWebLayer::new(), tower::util::option_layer(cors))
}

fn cors_layer(origins: &CorsOrigins) -> CorsLayer {
    let allowed = origins.0.iter().map(|o| HeaderValue::from_str(o).expect("a validated origin is a valid header"));
    let header = HeaderName::from_static;
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::POST])
        // What gRPC-Web clients send, and the bearer token and request id of this API.
        .allow_headers(
            ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "authorization", "x-request-id"].map(header),
        )
        // Errors arrive in these headers (trailers-only responses); the rest is in the body.
        .expose_headers(["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"].map(header))
        .max_age(Duration::from_secs(24 * 60 * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_origins() {
        let origins = CorsOrigins::parse(" https://App.example.com, http://localhost:5173 ,").unwrap();
        assert_eq!(origins.0, ["https://app.example.com", "http://localhost:5173"]);
        assert!(CorsOrigins::parse("").unwrap().is_empty());
    }

    #[test]
    fn refuses_what_could_never_match() {
        for bad in
            ["*", "app.example.com", "https://app.example.com/", "ftp://x", "https://", "https://u@x", "http://a b"]
        {
            assert!(CorsOrigins::parse(bad).is_err(), "{bad}");
        }
        let env: &[(&str, &str)] = &[(VAR, "https://ok.example, nope")];
        let err = CorsOrigins::from_env(&env).unwrap_err();
        assert_eq!(err.var, VAR);
        assert!(err.to_string().contains("\"nope\" is not an origin"), "{err}");
    }
}
