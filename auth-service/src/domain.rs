//! Request values parsed into types that are valid by construction: handlers only ever see an
//! `Email` that passed the syntax check and a `Password` normalised and within bcrypt's limits.

use secrecy::{ExposeSecret, SecretString};
use todo_shared::server::status::FieldViolation;

/// An email address in the one form an account is known by: trimmed, Unicode NFKC, lower case,
/// the domain in its ASCII form by UTS #46 (IDNA: `bücher.example` is `xn--bcher-kva.example`),
/// syntactically plausible, at most 255 characters. Addresses that differ only in compatibility
/// characters (full-width letters, the Kelvin sign), case or the spelling of an international
/// domain are the same account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldViolation> {
        if raw.trim().is_empty() {
            return Err(FieldViolation::new(field, "is required"));
        }
        let Some(email) = canonical(raw) else {
            return Err(FieldViolation::new(field, "is not a valid email address (its domain is not a valid name)"));
        };
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
        canonical(raw).unwrap_or_else(|| nfkc(raw.trim()).to_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `raw` trimmed, NFKC, lower-cased, with the part after the last `@` converted by UTS #46 to
/// ASCII; None when that part is not a valid domain name.
fn canonical(raw: &str) -> Option<String> {
    let email = nfkc(raw.trim()).to_lowercase();
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let domain = idna::domain_to_ascii(domain).ok()?;
            Some(format!("{local}@{domain}"))
        }
        None => Some(email),
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

/// A password for a new hash, as NIST SP 800-63B (5.1.1.2) and OWASP ASVS 5.0 (V6.2) ask:
/// normalised to Unicode NFKC (so that a composed and a decomposed "ñ", or full-width letters,
/// are the same password on every device), then at least 8 characters and at most 72 bytes
/// (bcrypt ignores anything past 72, so longer is refused rather than silently cut), no NUL
/// (which some bcrypt implementations stop at). No composition rules (ASVS V6.2.5); a common or
/// guessable one is refused by `check_not_guessable`.
pub struct Password(SecretString);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_BYTES: usize = 72;
    /// A password zxcvbn expects to guess in fewer tries than this is refused. One common
    /// password, word or name alone ranks below 10,000 (its place in zxcvbn's lists); zxcvbn
    /// adds 10,000 guesses per further part, so 100,000 also catches two weak parts together:
    /// a common word or the user's own name with a digit or a year, `todoapp1`, `sunshine2024`.
    /// Three or more parts (a passphrase) are always above it.
    pub const MIN_GUESSES: u64 = 100_000;
    /// Words no password may be alone (ASVS V6.1.2: the product's own names).
    pub const CONTEXT_WORDS: [&'static str; 4] = ["todo", "todoapp", "todo-auth", "taskservice"];

    pub fn parse(field: &'static str, raw: String) -> Result<Self, FieldViolation> {
        let normalized = nfkc(&raw);
        drop(SecretString::from(raw)); // wiped on drop, as the normalised copy will be
        let (chars, len) = (normalized.chars().count(), normalized.len());
        let has_nul = normalized.contains('\0');
        let secret = SecretString::from(normalized);
        if chars < Self::MIN_CHARS {
            return Err(FieldViolation::new(field, format!("must be at least {} characters", Self::MIN_CHARS)));
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

    /// Refuses a password that is common or guessable for this account: zxcvbn's estimate
    /// (its ranked lists of common passwords, words and names, keyboard patterns, sequences,
    /// dates, l33t spellings) with `email`, its local part and `CONTEXT_WORDS` as the account's
    /// own words, below `MIN_GUESSES`. The error says why, never what the password was.
    pub fn check_not_guessable(&self, field: &'static str, email: &str) -> Result<(), FieldViolation> {
        let local = email.split('@').next().unwrap_or_default();
        let mut words = vec![email, local];
        words.extend(Self::CONTEXT_WORDS);
        let estimate = zxcvbn::zxcvbn(self.expose(), &words);
        if estimate.guesses() < Self::MIN_GUESSES {
            return Err(FieldViolation::new(
                field,
                "is too common or too easy to guess (a well-known password, your email, a keyboard pattern or a \
                 word with a digit or two); a few uncommon words together make a good one",
            ));
        }
        Ok(())
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// `text` in Unicode Normalization Form KC (UAX #15).
pub fn nfkc(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    text.nfkc().collect()
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
    fn equivalent_addresses_are_one_form() {
        let kate = Email::parse("email", "kate@example.com").unwrap();
        for same in [
            "\u{ff4b}\u{ff41}\u{ff54}\u{ff45}@example.com", // full-width letters
            "kate@\u{ff45}xample.com",
            "\u{212a}ate@example.com", // the Kelvin sign
            " KATE@EXAMPLE.COM ",
        ] {
            assert_eq!(Email::parse("email", same).unwrap(), kate, "{same:?}");
            assert_eq!(Email::normalize_for_lookup(same), kate.as_str(), "{same:?}");
        }
        let idn = Email::parse("email", "Ana@B\u{fc}cher.Example").unwrap();
        assert_eq!(idn.as_str(), "ana@xn--bcher-kva.example");
        assert_eq!(Email::parse("email", "ana@xn--bcher-kva.example").unwrap(), idn);
        assert!(Email::parse("email", "ana@b\u{fc}cher..example").is_err());
    }

    #[test]
    fn passwords_are_at_least_8_characters_and_at_most_72_bytes() {
        assert!(Password::parse("password", "1234567".into()).is_err());
        assert!(Password::parse("password", "12345678".into()).is_ok());
        // Two 4-byte characters are 8 bytes but 2 characters.
        assert!(Password::parse("password", "🌊🌊".into()).is_err());
        assert!(Password::parse("password", "🌊".repeat(8)).is_ok());
        assert!(Password::parse("password", "x".repeat(72)).is_ok());
        assert!(Password::parse("password", "x".repeat(73)).is_err());
        // 24 three-byte characters are 72 bytes; 25 are 75.
        assert!(Password::parse("password", "€".repeat(24)).is_ok());
        assert!(Password::parse("password", "€".repeat(25)).is_err());
        assert!(Password::parse("password", "abcd\0efgh".into()).is_err());
    }

    #[test]
    fn passwords_are_normalised_to_nfkc() {
        let composed = Password::parse("password", "Contrase\u{f1}a-\u{dc}n\u{ef}code-1".into()).unwrap();
        let decomposed = Password::parse("password", "Contrasen\u{303}a-U\u{308}ni\u{308}code-1".into()).unwrap();
        assert_eq!(composed.expose(), decomposed.expose());
        let full_width = Password::parse("password", "\u{ff30}\u{ff41}\u{ff53}\u{ff53}-phrase-9".into()).unwrap();
        assert_eq!(full_width.expose(), "Pass-phrase-9");
    }

    #[test]
    fn common_and_personal_passwords_are_refused() {
        let check = |password: &str, email: &str| {
            Password::parse("password", password.into()).unwrap().check_not_guessable("password", email)
        };
        for common in [
            "password123",
            "qwertyuiop",
            "12345678",
            "iloveyou1",
            "P@ssw0rd",
            "abcdefgh",
            "aaaaaaaa",
            "sunshine2024",
            "elephant",
        ] {
            assert!(check(common, "kate@example.com").is_err(), "{common} is common");
        }
        assert!(check("kate@example.com", "kate@example.com").is_err(), "the email itself");
        assert!(check("katekate", "katekate@example.com").is_err(), "the local part");
        assert!(check("todoapp1", "kate@example.com").is_err(), "the product's name");
        for fine in [
            "correct horse battery",
            "s3cret-password",
            "another secret pw",
            "bench password",
            "Contrase\u{f1}a-\u{dc}n\u{ef}code-1",
        ] {
            assert!(check(fine, "kate@example.com").is_ok(), "{fine} is not common");
        }
        let err = check("password123", "kate@example.com").unwrap_err();
        assert!(!err.description.contains("password123"));
    }

    #[test]
    fn password_errors_never_contain_the_password() {
        let err = Password::parse("password", "short".into()).err().unwrap();
        assert!(!err.description.contains("short"));
    }
}
