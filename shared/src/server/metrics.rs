//! Prometheus metrics, served at `/metrics` on `METRICS_ADDR` when it is set.
//!
//! The gRPC series carry the go-grpc-prometheus names and labels, so existing dashboards and
//! alerts work: `grpc_server_started_total`, `grpc_server_handled_total` (with `grpc_code` spelled
//! as Go prints codes: OK, InvalidArgument, ...) and the `grpc_server_handling_seconds` histogram.
//! Gauges (pool, bcrypt queue) are read when scraped, so they cost nothing between scrapes.
//!
//! The database, as the design's monitoring section asks (query performance, pool use, storage):
//! - `db_statement_duration_seconds{statement, outcome}`: each statement's time, by the store
//!   function's name (`todo_database::statement`);
//! - `db_pool_connections{state}`, `db_pool_max_connections`, and the wait for a connection:
//!   `db_pool_acquire_seconds` (histogram) and `db_pool_acquire_timeouts_total`
//!   (`todo_database::pool_stats`);
//! - `db_relation_size_bytes{relation, kind}`, `db_relation_rows_estimate{relation}` and
//!   `db_feed_tombstones`, read at most once a minute and only while the instance has calls
//!   (`todo_database::storage`): a scrape never wakes an idle database.
//!
//! Each server has its own registry (no process-global recorder): a process runs one server in
//! production, and the tests run several in one process without their counts mixing.
//!
//! The call layer (`access_log`) records each call: the method's series are resolved once at
//! start from the descriptor sets, so a call costs a hash lookup of its path and a few atomics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use todo_database::Db;
use todo_database::storage::StorageReadings;
use tokio::net::TcpListener;

/// go-grpc-prometheus's buckets (Prometheus' defaults), plus 1 ms: most of our calls are faster
/// than the first default bucket.
const HANDLING_BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The exposition format `prometheus-client` writes (Prometheus prefers it when offered).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelationLabels {
    relation: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    relation: String,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

fn handling_histogram() -> Histogram {
    Histogram::new(HANDLING_BUCKETS)
}

/// A code as go-grpc-prometheus writes it in `grpc_code` (Go's `codes.Code.String()`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "Canceled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

/// One method's series. The handled counters are created on a code's first use, so that the
/// exposition does not list 17 zero series per method.
pub struct MethodSeries {
    labels: MethodLabels,
    started: Counter,
    handling: Histogram,
    handled: [OnceLock<Counter>; 17],
    handled_family: Family<HandledLabels, Counter>,
}

impl MethodSeries {
    /// Streams are counted as handled when they end (their code is in the trailers).
    pub fn is_stream(&self) -> bool {
        self.labels.grpc_type != "unary"
    }

    /// Records the end of a call: its code and how long it took.
    pub fn handled(&self, code: tonic::Code, elapsed: Duration) {
        let index = (code as usize).min(16);
        self.handled[index]
            .get_or_init(|| {
                self.handled_family
                    .get_or_create(&HandledLabels {
                        grpc_type: self.labels.grpc_type,
                        grpc_service: self.labels.grpc_service.clone(),
                        grpc_method: self.labels.grpc_method.clone(),
                        grpc_code: code_name(code),
                    })
                    .clone()
            })
            .inc();
        self.handling.observe(elapsed.as_secs_f64());
    }
}

/// What a stream still has to record when it ends.
pub struct StreamEnd {
    series: Arc<MethodSeries>,
    started: std::time::Instant,
}

impl StreamEnd {
    /// Counts a stream of `series` that began at `started` when it ends.
    pub fn new(series: Arc<MethodSeries>, started: std::time::Instant) -> Self {
        Self { series, started }
    }

    fn finish(self, code: tonic::Code) {
        self.series.handled(code, self.started.elapsed());
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its stream's end: the code in the trailers, or Canceled
    /// when the body is dropped first (the client went away, or the drain cut the stream).
    /// For unary calls (recorded at the headers) it only passes frames through.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        end: Option<StreamEnd>,
    }

    impl<B> PinnedDrop for CountedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(end) = this.project().end.take() {
                end.finish(tonic::Code::Cancelled);
            }
        }
    }
}

impl<B> CountedBody<B> {
    /// `inner`, counting the stream `end` (if any) when the body ends.
    pub fn new(inner: B, end: Option<StreamEnd>) -> Self {
        Self { inner, end }
    }
}

/// The `grpc-status` of a header map (response headers or trailers), if it has one.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

impl<B: http_body::Body> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if this.end.is_some() {
            let code = match &polled {
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    frame.trailers_ref().map(|t| grpc_status(t).unwrap_or(tonic::Code::Unknown))
                }
                std::task::Poll::Ready(Some(Err(_))) => Some(tonic::Code::Unknown),
                // A gRPC body always ends with trailers; one that does not ended abnormally.
                std::task::Poll::Ready(None) => Some(tonic::Code::Unknown),
                std::task::Poll::Pending => None,
            };
            if let Some(code) = code
                && let Some(end) = this.end.take()
            {
                end.finish(code);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The gRPC series of one server, looked up by request path.
pub struct GrpcMetrics {
    methods: HashMap<String, Arc<MethodSeries>>,
    /// Paths no served service declares (probes, typos) share one series: labels taken from
    /// the path would let any client grow the exposition without bound.
    unknown: Arc<MethodSeries>,
}

impl GrpcMetrics {
    /// Counts a call as started and returns its method's series, for `handled` at the end.
    pub fn started(&self, path: &str) -> Arc<MethodSeries> {
        let series = self.methods.get(path).unwrap_or(&self.unknown).clone();
        series.started.inc();
        series
    }
}

/// A gauge read at each scrape, for what a service knows and the shared code does not (such
/// as auth-service's bcrypt queue).
pub struct SampledGauge {
    /// The series name, e.g. `db_pool_connections`.
    pub name: &'static str,
    /// The HELP text of the series.
    pub help: &'static str,
    /// Reads the value when the endpoint is scraped.
    pub read: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl SampledGauge {
    /// A gauge `name` read by `read` at each scrape.
    pub fn new(name: &'static str, help: &'static str, read: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self { name, help, read: Box::new(read) }
    }
}

/// Everything one server exposes: the registry, and what to read just before encoding it.
pub struct Metrics {
    registry: Registry,
    /// The gRPC series, for the access-log layer to count calls in.
    pub grpc: Arc<GrpcMetrics>,
    samplers: Vec<Box<dyn Fn() + Send + Sync>>,
    storage: StorageGauges,
}

/// The storage series, set from the latest reading before each scrape.
struct StorageGauges {
    readings: StorageReadings,
    sizes: Family<RelationLabels, Gauge>,
    rows: Family<TableLabels, Gauge>,
    tombstones: Gauge,
}

impl StorageGauges {
    fn register(registry: &mut Registry, db: &Db) -> Self {
        let gauges = Self {
            readings: StorageReadings::new(db.clone()),
            sizes: Family::default(),
            rows: Family::default(),
            tombstones: Gauge::default(),
        };
        registry.register(
            "db_relation_size_bytes",
            "Bytes on disk of each table and index of the schema (read at most once a minute, while there are calls)",
            gauges.sizes.clone(),
        );
        registry.register(
            "db_relation_rows_estimate",
            "The planner's row estimate of each table (pg_class.reltuples)",
            gauges.rows.clone(),
        );
        registry.register(
            "db_feed_tombstones",
            "Deleted tasks' tombstones in task_tombstones, awaiting pruning after the sync retention time",
            gauges.tombstones.clone(),
        );
        gauges
    }

    async fn refresh(&self) {
        let Some(storage) = self.readings.current().await else { return };
        for relation in storage.relations {
            if relation.kind == "table" {
                self.rows.get_or_create(&TableLabels { relation: relation.name.clone() }).set(relation.rows_estimate);
            }
            self.sizes
                .get_or_create(&RelationLabels { relation: relation.name, kind: relation.kind })
                .set(relation.size_bytes);
        }
        self.tombstones.set(storage.tombstones);
    }
}

/// One served gRPC method, from the descriptor sets.
struct MethodInfo {
    service: String,
    method: String,
    grpc_type: &'static str,
}

/// The methods of `services` as declared in the descriptor sets the server embeds.
fn served_methods(services: &[&str]) -> Vec<MethodInfo> {
    let sets = [
        todo_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = Vec::new();
    for set in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            tracing::warn!("an embedded descriptor set does not decode; its methods are counted as unknown");
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                let full = if package.is_empty() { name } else { format!("{package}.{name}") };
                if !services.contains(&full.as_str()) {
                    continue;
                }
                for method in service.method {
                    let grpc_type = match (method.client_streaming(), method.server_streaming()) {
                        (false, false) => "unary",
                        (true, false) => "client_stream",
                        (false, true) => "server_stream",
                        (true, true) => "bidi_stream",
                    };
                    methods.push(MethodInfo {
                        service: full.clone(),
                        method: method.name.unwrap_or_default(),
                        grpc_type,
                    });
                }
            }
        }
    }
    methods
}

impl Metrics {
    /// The series for `services` (fully qualified names: the service's own, health, reflection),
    /// the database's (statements, pool, storage), and `gauges`.
    pub fn new(services: &[&str], db: &Db, gauges: Vec<SampledGauge>) -> Self {
        let max_connections = db.pool().options().get_max_connections();
        let mut registry = Registry::default();
        let started = Family::<MethodLabels, Counter>::default();
        let handled = Family::<HandledLabels, Counter>::default();
        let handling: HistogramFamily = Family::new_with_constructor(handling_histogram);
        registry.register("grpc_server_started", "Total number of RPCs started on the server", started.clone());
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            handling.clone(),
        );
        let series = |labels: MethodLabels| {
            Arc::new(MethodSeries {
                started: started.get_or_create(&labels).clone(),
                handling: handling.get_or_create(&labels).clone(),
                handled: std::array::from_fn(|_| OnceLock::new()),
                handled_family: handled.clone(),
                labels,
            })
        };
        let methods = served_methods(services)
            .into_iter()
            .map(|m| {
                let path = format!("/{}/{}", m.service, m.method);
                (path, series(MethodLabels { grpc_type: m.grpc_type, grpc_service: m.service, grpc_method: m.method }))
            })
            .collect();
        let unknown =
            series(MethodLabels { grpc_type: "unary", grpc_service: "unknown".into(), grpc_method: "unknown".into() });

        let mut samplers: Vec<Box<dyn Fn() + Send + Sync>> = Vec::new();
        let connections = Family::<StateLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Connections of the PostgreSQL pool, by state (idle or in_use)",
            connections.clone(),
        );
        let max = Gauge::<i64>::default();
        max.set(i64::from(max_connections));
        registry.register("db_pool_max_connections", "The most connections the pool opens (DB_MAX_CONNECTIONS)", max);
        let waits = db.pool_stats().clone();
        registry.register(
            "db_pool_acquire_seconds",
            "Time a statement waited for a pooled connection, in seconds",
            waits.acquire_seconds,
        );
        registry.register(
            "db_pool_acquire_timeouts",
            "Waits for a pooled connection that ran out (the pool's 3 s acquire timeout)",
            waits.acquire_timeouts,
        );
        registry.register(
            "db_statement_duration_seconds",
            "Time of each SQL statement, from asking for a connection to the last row, by statement and outcome (ok, deadline, unavailable, error)",
            todo_database::statement::statement_durations().clone(),
        );
        let storage = StorageGauges::register(&mut registry, db);
        let pool = db.pool().clone();
        samplers.push(Box::new(move || {
            let size = i64::from(pool.size());
            let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX).min(size);
            connections.get_or_create(&StateLabels { state: "idle" }).set(idle);
            connections.get_or_create(&StateLabels { state: "in_use" }).set(size - idle);
        }));
        for gauge in gauges {
            let value = Gauge::<i64>::default();
            registry.register(gauge.name, gauge.help, value.clone());
            let read = gauge.read;
            samplers.push(Box::new(move || {
                value.set(read());
            }));
        }
        Self { registry, grpc: Arc::new(GrpcMetrics { methods, unknown }), samplers, storage }
    }

    /// The exposition, with the sampled gauges read now and the storage series from the latest
    /// reading (taken now when due).
    pub async fn render(&self) -> String {
        self.storage.refresh().await;
        for sample in &self.samplers {
            sample();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// The services every server answers besides its own.
const STANDARD_SERVICES: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Binds `addr`, starts serving `/metrics` there, and returns what the call layer records into
/// and the endpoint (which stops when dropped).
pub async fn start(
    addr: std::net::SocketAddr,
    services: &[&str],
    db: &Db,
    gauges: Vec<SampledGauge>,
) -> anyhow::Result<(Arc<GrpcMetrics>, Endpoint)> {
    let all: Vec<&str> = services.iter().copied().chain(STANDARD_SERVICES).collect();
    let metrics = Metrics::new(&all, db, gauges);
    let listener =
        TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr} (METRICS_ADDR): {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
    let grpc = metrics.grpc.clone();
    Ok((grpc, spawn_endpoint(listener, Arc::new(metrics))))
}

/// The running `/metrics` endpoint; dropping it stops it, however the server's run ends: the
/// listener closes, idle scrapers' connections close, and a scrape under way is answered first.
pub struct Endpoint {
    /// Dropped with the endpoint, which tells the server to stop (graceful shutdown).
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves `GET /metrics` over HTTP/1.1 on `listener` (404 for any other path, 405 for any other
/// method) until the returned endpoint is dropped.
fn spawn_endpoint(listener: TcpListener, metrics: Arc<Metrics>) -> Endpoint {
    let scrape = move || {
        let metrics = metrics.clone();
        async move { ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render().await) }
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .fallback(|| async { (http::StatusCode::NOT_FOUND, "only /metrics is served here\n") });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        // The sender is never used: its drop is the signal.
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "metrics endpoint stopped with an error");
        }
    });
    Endpoint { _stop: stop }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_spelled_as_go_prints_them() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::Cancelled), "Canceled");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "InvalidArgument");
        assert_eq!(code_name(tonic::Code::Unauthenticated), "Unauthenticated");
    }

    #[test]
    fn method_types_come_from_the_descriptors() {
        let methods = served_methods(&["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]);
        let find = |name: &str| methods.iter().find(|m| m.method == name).map(|m| m.grpc_type);
        assert_eq!(find("Check"), Some("unary"));
        assert_eq!(find("Watch"), Some("server_stream"));
        assert_eq!(find("ServerReflectionInfo"), Some("bidi_stream"));
        assert!(methods.iter().all(|m| m.service != "todo.auth.v1.AuthService"), "only served services are listed");
    }
}
