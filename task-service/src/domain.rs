//! Request values parsed into valid domain types at the edge. Lengths are counted in
//! characters, as PostgreSQL's char_length counts them in the schema's CHECKs.

use todo_shared::server::status::FieldViolation;

/// A task id that can exist: positive and within the SERIAL column's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskId {
    Valid(i32),
    /// Positive but beyond any SERIAL value: such a task cannot exist (NOT_FOUND).
    OutOfRange,
}

impl TaskId {
    pub fn parse(raw: i64) -> Result<Self, FieldViolation> {
        if raw <= 0 {
            return Err(FieldViolation::new("id", "must be a positive task id"));
        }
        Ok(i32::try_from(raw).map(TaskId::Valid).unwrap_or(TaskId::OutOfRange))
    }
}

fn check_text(field: &'static str, value: &str, max_chars: usize) -> Result<(), FieldViolation> {
    if value.chars().count() > max_chars {
        return Err(FieldViolation::new(field, format!("must be at most {max_chars} characters")));
    }
    if value.contains('\0') {
        return Err(FieldViolation::new(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// 1 to 255 characters, not only whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(raw: String) -> Result<Self, FieldViolation> {
        if raw.trim().is_empty() {
            return Err(FieldViolation::new("title", "is required and must not be blank"));
        }
        check_text("title", &raw, Self::MAX_CHARS)?;
        Ok(Title(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// At most 1000 characters; the empty string means "no description".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description(Option<String>);

impl Description {
    pub const MAX_CHARS: usize = 1000;

    pub fn parse(raw: String) -> Result<Self, FieldViolation> {
        check_text("description", &raw, Self::MAX_CHARS)?;
        Ok(Description(if raw.is_empty() { None } else { Some(raw) }))
    }

    pub fn as_option(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// A client's idempotency key for CreateTask: 1 to 128 printable characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    pub const MAX_CHARS: usize = 128;

    /// None for the empty string (no idempotency asked for).
    pub fn parse(raw: String) -> Result<Option<Self>, FieldViolation> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.chars().count() > Self::MAX_CHARS || raw.chars().any(char::is_control) {
            return Err(FieldViolation::new(
                "request_id",
                format!("must be at most {} printable characters (a UUID is a good choice)", Self::MAX_CHARS),
            ));
        }
        Ok(Some(RequestId(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An etag the client sent back: it names a version of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Etag(pub i64);

impl Etag {
    pub fn format(version: i64) -> String {
        format!("{version:x}")
    }

    /// None for the empty string (no precondition).
    pub fn parse(raw: &str) -> Result<Option<Self>, FieldViolation> {
        if raw.is_empty() {
            return Ok(None);
        }
        let raw = raw.trim_matches('"');
        i64::from_str_radix(raw, 16)
            .ok()
            .filter(|v| *v >= 0 && raw.len() <= 16)
            .map(|v| Some(Etag(v)))
            .ok_or_else(|| FieldViolation::new("etag", "is not an etag returned by this service"))
    }
}

/// Sort order of ListTasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderBy {
    CreateTimeAsc,
    CreateTimeDesc,
    UpdateTimeAsc,
    UpdateTimeDesc,
}

impl OrderBy {
    /// "" (create_time desc), "create_time", "create_time desc", "update_time",
    /// "update_time desc"; " asc" is accepted too, spaces and case are forgiven.
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let words: Vec<String> = raw.split_whitespace().map(str::to_ascii_lowercase).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
            [] => Ok(OrderBy::CreateTimeDesc),
            ["create_time"] | ["create_time", "asc"] => Ok(OrderBy::CreateTimeAsc),
            ["create_time", "desc"] => Ok(OrderBy::CreateTimeDesc),
            ["update_time"] | ["update_time", "asc"] => Ok(OrderBy::UpdateTimeAsc),
            ["update_time", "desc"] => Ok(OrderBy::UpdateTimeDesc),
            _ => Err(FieldViolation::new(
                "order_by",
                "must be one of \"create_time\", \"create_time desc\", \"update_time\", \"update_time desc\"",
            )),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            OrderBy::CreateTimeAsc => 1,
            OrderBy::CreateTimeDesc => 2,
            OrderBy::UpdateTimeAsc => 3,
            OrderBy::UpdateTimeDesc => 4,
        }
    }
}

/// page_size as the contract defines it: 0 means 50, above 1000 is cut to 1000.
pub fn page_size(raw: i32) -> Result<i64, FieldViolation> {
    match raw {
        ..0 => Err(FieldViolation::new("page_size", "must not be negative")),
        0 => Ok(50),
        1..=1000 => Ok(raw as i64),
        _ => Ok(1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_count_characters_like_postgres() {
        assert!(Title::parse("é".repeat(255)).is_ok());
        assert!(Title::parse("é".repeat(256)).is_err());
        assert!(Title::parse(String::new()).is_err());
        assert!(Title::parse("  \t".into()).is_err());
        assert!(Title::parse("a\0b".into()).is_err());
    }

    #[test]
    fn descriptions() {
        assert_eq!(Description::parse(String::new()).unwrap().as_option(), None);
        assert!(Description::parse("😀".repeat(1000)).is_ok());
        assert!(Description::parse("x".repeat(1001)).is_err());
        assert!(Description::parse("a\0b".into()).is_err(), "NUL is refused");
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(7).unwrap(), 7);
        assert_eq!(page_size(5000).unwrap(), 1000);
        assert_eq!(page_size(-1).unwrap_err().field, "page_size");
    }

    #[test]
    fn order_by_values() {
        assert_eq!(OrderBy::parse("").unwrap(), OrderBy::CreateTimeDesc);
        assert_eq!(OrderBy::parse(" Update_Time   DESC ").unwrap(), OrderBy::UpdateTimeDesc);
        assert_eq!(OrderBy::parse("create_time").unwrap(), OrderBy::CreateTimeAsc);
        assert!(OrderBy::parse("title").is_err());
        assert!(OrderBy::parse("create_time sideways").is_err());
    }

    #[test]
    fn ids_and_etags() {
        assert!(TaskId::parse(0).is_err());
        assert_eq!(TaskId::parse(5).unwrap(), TaskId::Valid(5));
        assert_eq!(TaskId::parse(i64::MAX).unwrap(), TaskId::OutOfRange);
        assert_eq!(Etag::parse("").unwrap(), None);
        assert_eq!(Etag::parse(&Etag::format(1234)).unwrap(), Some(Etag(1234)));
        assert!(Etag::parse("not-an-etag").is_err());
    }

    #[test]
    fn request_ids() {
        assert_eq!(RequestId::parse(String::new()).unwrap(), None);
        assert!(RequestId::parse("x".repeat(129)).is_err());
        assert!(RequestId::parse("a\nb".into()).is_err());
        assert!(RequestId::parse("8c6f3a52-4f1c-4c0e-9d4a-2f0f8f1f2d11".into()).unwrap().is_some());
    }
}
