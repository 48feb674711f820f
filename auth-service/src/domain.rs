//! Request values parsed into types that are valid by construction: handlers only ever see an
//! `Email` that passed the syntax check and a `Password` within bcrypt's limits.

use secrecy::{ExposeSecret, SecretString};
use todo_shared::server::status::FieldViolation;

/// Trimmed, lower-cased, syntactically plausible, at most 255 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldViolation> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err(FieldViolation::new(field, "is required"));
        }
        if email.chars().count() > Self::MAX_CHARS {
            return Err(FieldViolation::new(field, format!("must be at most {} characters", Self::MAX_CHARS)));
        }
        if !is_plausible_address(&email) {
            return Err(FieldViolation::new(field, "is not a valid email address"));
        }
        Ok(Email(email))
    }

    /// For lookups at login: the same normalisation, without rejecting anything (an address
    /// that could never sign up simply matches no account).
    pub fn normalize_for_lookup(raw: &str) -> String {
        raw.trim().to_lowercase()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// local@domain with a dotted domain of letters, digits and hyphens, no spaces or controls.
fn is_plausible_address(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return false;
    }
    if local.chars().any(|c| c.is_whitespace() || c.is_control() || "()<>,;:\\\"[]".contains(c)) {
        return false;
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// A password for a new hash: 8 to 72 bytes (bcrypt ignores anything past 72, so longer is
/// refused rather than silently cut), no NUL (which some bcrypt implementations stop at).
pub struct Password(SecretString);

impl Password {
    pub const MIN_BYTES: usize = 8;
    pub const MAX_BYTES: usize = 72;

    pub fn parse(field: &'static str, raw: String) -> Result<Self, FieldViolation> {
        let len = raw.len();
        let has_nul = raw.contains('\0');
        let secret = SecretString::from(raw);
        if len < Self::MIN_BYTES {
            return Err(FieldViolation::new(field, format!("must be at least {} bytes", Self::MIN_BYTES)));
        }
        if len > Self::MAX_BYTES {
            return Err(FieldViolation::new(
                field,
                format!(
                    "must be at most {} bytes (bcrypt's limit; longer passwords are refused, not cut)",
                    Self::MAX_BYTES
                ),
            ));
        }
        if has_nul {
            return Err(FieldViolation::new(field, "must not contain NUL characters"));
        }
        Ok(Password(secret))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A password as typed at login or for confirmation: only required to be present; whether it
/// matches is bcrypt's answer.
pub struct PasswordAttempt(SecretString);

impl PasswordAttempt {
    pub fn parse(field: &'static str, raw: String) -> Result<Self, FieldViolation> {
        if raw.is_empty() {
            return Err(FieldViolation::new(field, "is required"));
        }
        Ok(PasswordAttempt(SecretString::from(raw)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(Email::parse("email", "  Alice@Example.COM ").unwrap().as_str(), "alice@example.com");
        for bad in [
            "",
            "   ",
            "alice",
            "alice@",
            "@example.com",
            "alice@example",
            "a b@example.com",
            "alice@exa_mple.com",
            "a..b@example.com",
            "alice@-example.com",
        ] {
            let err = Email::parse("email", bad).unwrap_err();
            assert_eq!(err.field, "email", "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse("email", &long).is_err());
    }

    #[test]
    fn passwords_are_bounded_in_bytes() {
        assert!(Password::parse("password", "1234567".into()).is_err());
        assert!(Password::parse("password", "12345678".into()).is_ok());
        assert!(Password::parse("password", "x".repeat(72)).is_ok());
        assert!(Password::parse("password", "x".repeat(73)).is_err());
        // 24 three-byte characters are 72 bytes; 25 are 75.
        assert!(Password::parse("password", "€".repeat(24)).is_ok());
        assert!(Password::parse("password", "€".repeat(25)).is_err());
        assert!(Password::parse("password", "abcd\0efgh".into()).is_err());
    }

    #[test]
    fn password_errors_never_contain_the_password() {
        let err = Password::parse("password", "short".into()).err().unwrap();
        assert!(!err.description.contains("short"));
    }
}
