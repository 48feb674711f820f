//! One SQL statement, observed: a span per statement and its duration in a histogram, both by
//! the statement's name (the store function's, such as `list_tasks`), never by its text or values.
//!
//! - The span `sql` (exported as a span named after the statement when traces are on, see
//!   `todo_shared::server::telemetry`) carries `db.system.name`, `db.operation.name` and
//!   `db.response.returned_rows`, the names of the OpenTelemetry database conventions
//!   (<https://opentelemetry.io/docs/specs/semconv/database/database-spans/>). Never the values:
//!   they hold emails, password hashes and token hashes.
//! - `db_statement_duration_seconds{statement, outcome}`: the time from asking the pool for a
//!   connection to the last row, by outcome (`ok`, `deadline`: cancelled at the call's
//!   deadline, `unavailable`: the database could not be reached, `error`: anything else).
//!
//! The histogram is process-wide ([`statement_durations`]): a process runs one server in
//! production, and a family registered in several registries (the tests' servers) is the same
//! series in each.

use crate::classify::{is_deadline, is_unavailable};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Instant;
use tracing::Instrument;

/// Seconds: most statements take well under a millisecond; the deadline caps them at a few seconds.
const BUCKETS: [f64; 13] = [0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The labels of `db_statement_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatementLabels {
    /// The statement's name, e.g. `list_tasks`.
    pub statement: &'static str,
    /// `ok`, `deadline`, `unavailable` or `error`.
    pub outcome: &'static str,
}

/// The histogram family of statement durations, in seconds.
pub type StatementDurations = Family<StatementLabels, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

static DURATIONS: LazyLock<StatementDurations> = LazyLock::new(|| Family::new_with_constructor(histogram));

/// The process-wide durations of every observed statement, for a metrics registry to expose
/// (a clone shares the series).
pub fn statement_durations() -> &'static StatementDurations {
    &DURATIONS
}

/// How many rows a statement's result returned or touched, for its span.
pub trait Rows {
    /// The row count.
    fn rows(&self) -> u64;
}

impl Rows for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl<T> Rows for Option<T> {
    fn rows(&self) -> u64 {
        u64::from(self.is_some())
    }
}

impl<T> Rows for Vec<T> {
    fn rows(&self) -> u64 {
        self.len() as u64
    }
}

/// A result of exactly one row (`fetch_one`): see [`observed_one`].
pub struct One<T>(pub T);

impl<T> Rows for One<T> {
    fn rows(&self) -> u64 {
        1
    }
}

/// Runs `work`, one statement named `name`, inside its span, and records its duration and
/// outcome. The result is `work`'s, untouched.
pub async fn observed<T: Rows>(
    name: &'static str,
    work: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    let span = tracing::info_span!(
        "sql",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = "postgresql",
        db.operation.name = name,
        db.response.returned_rows = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
    );
    let started = Instant::now();
    let result = work.instrument(span.clone()).await;
    let outcome = match &result {
        Ok(rows) => {
            span.record("db.response.returned_rows", rows.rows());
            "ok"
        }
        Err(e) => {
            let outcome = if is_deadline(e) {
                "deadline"
            } else if is_unavailable(e) {
                "unavailable"
            } else {
                "error"
            };
            span.record("otel.status_code", "ERROR");
            span.record("error.type", outcome);
            outcome
        }
    };
    DURATIONS.get_or_create(&StatementLabels { statement: name, outcome }).observe(started.elapsed().as_secs_f64());
    result
}

/// [`observed`] for a statement that returns exactly one row (`fetch_one`).
pub async fn observed_one<T>(
    name: &'static str,
    work: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    observed(name, async { work.await.map(One) }).await.map(|One(row)| row)
}
