//! Logging and traces.
//!
//! Logging: `RUST_LOG` filters (default `info`, sqlx notices at `warn`), `LOG_FORMAT` is `text` or
//! `json`.
//!
//! Traces: off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set; then the `tracing` spans that `RUST_LOG` lets through are exported over OTLP/gRPC
//! (tracing-opentelemetry, the OpenTelemetry SDK's batch processor and its tonic exporter). The
//! standard OpenTelemetry variables apply as the SDK reads them: `OTEL_SERVICE_NAME` (default the
//! binary's name), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_SAMPLER` and its `_ARG`, `OTEL_BSP_*`
//! (<https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/>).
//! A call's span (`access_log`) continues the caller's trace when its metadata holds a W3C
//! `traceparent` ([`continue_trace`]); each SQL statement is a child span
//! (`todo_database::statement`) named after the statement, with its row count and never its values.

use crate::env::{ConfigError, Env, optional};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `LOG_FORMAT`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` (`text`, the default, or `json`).
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        match optional(env, "LOG_FORMAT").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(ConfigError::new("LOG_FORMAT", format!("expected text or json, got {other:?}"))),
        }
    }
}

/// Every variable `init` reads, for `--help`.
pub const SETTINGS: &[crate::env::Setting] = &[
    crate::env::Setting { var: "RUST_LOG", default: "info", meaning: "tracing filter" },
    crate::env::Setting { var: "LOG_FORMAT", default: "text", meaning: "text, or json (one JSON object a line)" },
    crate::env::Setting {
        var: "OTEL_EXPORTER_OTLP_ENDPOINT",
        default: "unset: no traces",
        meaning: "OTLP/gRPC collector to export traces to, e.g. http://otel-collector:4317 (the other OTEL_* variables apply)",
    },
    crate::env::Setting {
        var: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        default: "OTEL_EXPORTER_OTLP_ENDPOINT",
        meaning: "the same, for traces only (takes precedence)",
    },
    crate::env::Setting {
        var: "OTEL_SERVICE_NAME",
        default: "the binary's name",
        meaning: "service.name of the exported spans",
    },
];

/// The exporter, while traces are on: its spans are flushed when it is shut down.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The W3C Trace Context propagator (`traceparent`, `tracestate`).
static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

/// True once `init` has turned traces on.
pub fn traces_on() -> bool {
    PROVIDER.get().is_some()
}

/// Makes `span` (a call's) a child of the caller's span when `headers` hold a valid W3C
/// `traceparent`; otherwise it starts a trace of its own. Does nothing while traces are off.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if let Some(propagator) = PROPAGATOR.get() {
        let parent = propagator.extract(&opentelemetry_http::HeaderExtractor(headers));
        // An error only says the span is disabled (filtered out): nothing to continue then.
        let _ = span.set_parent(parent);
    }
}

/// Exports the spans still buffered and stops the exporter (at the end of `main`).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(e) = provider.shutdown()
    {
        eprintln!("flushing traces at exit failed: {e}");
    }
}

/// `RUST_LOG` as a filter (default `info`, sqlx notices at `warn`); an error naming it when
/// it is not a valid filter.
pub fn filter(env: &dyn Env) -> Result<EnvFilter, ConfigError> {
    match optional(env, "RUST_LOG") {
        // sqlx reports "relation already exists, skipping" as a notice at every start.
        None => Ok(EnvFilter::new("info,sqlx::postgres::notice=warn")),
        Some(spec) => {
            EnvFilter::try_new(&spec).map_err(|e| ConfigError::new("RUST_LOG", format!("not a valid filter: {e}")))
        }
    }
}

/// What decides whether traces are exported, and under which name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// The variable that set the collector's address, when one did (the SDK reads the address
    /// itself, and the other `OTEL_*` variables).
    pub endpoint_variable: Option<&'static str>,
    /// `OTEL_SERVICE_NAME`, when set.
    pub service_name: Option<String>,
}

impl TraceSettings {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`.
    pub fn from_env(env: &dyn Env) -> Self {
        let traces = optional(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").map(|_| "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        let any = optional(env, "OTEL_EXPORTER_OTLP_ENDPOINT").map(|_| "OTEL_EXPORTER_OTLP_ENDPOINT");
        Self { endpoint_variable: traces.or(any), service_name: optional(env, "OTEL_SERVICE_NAME") }
    }
}

/// The trace exporter when a collector is set; an error naming the variable when the exporter
/// cannot be built from it. Must run inside the Tokio runtime (the tonic client's).
fn tracer_provider(settings: &TraceSettings, service_name: &str) -> Result<Option<SdkTracerProvider>, ConfigError> {
    let Some(variable) = settings.endpoint_variable else { return Ok(None) };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| ConfigError::new(variable, format!("cannot export traces there: {e}")))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if settings.service_name.is_none() {
        resource = resource.with_service_name(service_name.to_owned());
    }
    Ok(Some(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build()))
}

/// Installs the global subscriber: log lines as `LOG_FORMAT` says and, when an OTLP endpoint is
/// set, the trace exporter for `service_name`. `RUST_LOG` is checked first so that a typo is
/// reported. Call [`shutdown`] before the process exits, so that the last spans are sent.
pub fn init(env: &dyn Env, service_name: &str) -> Result<(), ConfigError> {
    let format = LogFormat::from_env(env)?;
    let filter = filter(env)?;
    let provider = tracer_provider(&TraceSettings::from_env(env), service_name)?;
    let traces = provider.as_ref().map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("todo")));
    let fmt = tracing_subscriber::fmt::layer().with_target(true);
    let logs = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    // A second init (several services in one process) keeps the first subscriber.
    if tracing_subscriber::registry().with(filter).with(logs).with(traces).try_init().is_ok()
        && let Some(provider) = provider
    {
        let _ = PROPAGATOR.set(TraceContextPropagator::new());
        let _ = PROVIDER.set(provider);
    }
    Ok(())
}
