//! Telemetry: OpenTelemetry metrics (a Prometheus endpoint always, OTLP
//! when `[telemetry] otlp_endpoint` is set), traces over OTLP, and the
//! operations listener (`[ops] listen`: `/healthz`, `/readyz`,
//! `/metrics`).
//!
//! Metric names follow OpenTelemetry conventions (`rpc.server.duration`,
//! `hedui.source.duration`, ...); the Prometheus exporter spells them the
//! Prometheus way (`rpc_server_duration_milliseconds`,
//! `hedui_source_duration_seconds`, `hedui_source_requests_total`). No
//! attribute carries personal data: sources, statuses, methods, purposes.

pub mod ops;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hedui_proto::v1::SourceStatus;
use opentelemetry::{
    KeyValue,
    metrics::{
        AsyncInstrument, Counter, Gauge, Histogram, Meter, ObservableCounter, UpDownCounter,
    },
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider, trace::SdkTracerProvider};
use serde::Deserialize;

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC endpoint of a collector (e.g. `http://otel-collector:4317`)
    /// for traces and metrics; absent: nothing is exported (the
    /// Prometheus endpoint still serves metrics).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the resource.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of verifications traced, 0.0 to 1.0.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// How often metrics are pushed over OTLP, in seconds.
    #[serde(default = "default_export_interval_s")]
    pub export_interval_s: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: default_service_name(),
            sample_ratio: default_sample_ratio(),
            export_interval_s: default_export_interval_s(),
        }
    }
}

fn default_service_name() -> String {
    "hedui".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

fn default_export_interval_s() -> u64 {
    30
}

/// `[ops]`: the operations listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Where `/healthz`, `/readyz` and `/metrics` are served (plain HTTP,
    /// no client certificates: keep it on the operations network);
    /// absent: not served.
    pub listen: Option<SocketAddr>,
}

impl TelemetryConfig {
    /// Checks the section; the message names the key.
    ///
    /// # Errors
    /// What is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "telemetry.otlp_endpoint: {url:?} must start with http:// or https://"
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err("telemetry.sample_ratio: must be between 0.0 and 1.0".into());
        }
        if self.export_interval_s == 0 || self.export_interval_s > 3600 {
            return Err("telemetry.export_interval_s: must be 1..=3600".into());
        }
        if self.service_name.is_empty() {
            return Err("telemetry.service_name: must not be empty".into());
        }
        Ok(())
    }
}

/// The telemetry pipelines of a running broker; flushes on drop of
/// [`Telemetry::shutdown`].
#[derive(Debug)]
pub struct Telemetry {
    registry: prometheus::Registry,
    meters: SdkMeterProvider,
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sets up metrics (Prometheus, and OTLP when configured) as the
    /// global meter provider, and the tracer provider when an OTLP
    /// endpoint is configured. Call once, before anything records a
    /// metric.
    ///
    /// # Errors
    /// When an exporter cannot be built.
    pub fn init(config: &TelemetryConfig) -> anyhow::Result<Self> {
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()?;
        let mut meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(prometheus);
        let mut tracer = None;
        if let Some(endpoint) = &config.otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter)
                .with_interval(Duration::from_secs(config.export_interval_s))
                .build();
            meters = meters.with_reader(reader);
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            tracer = Some(
                SdkTracerProvider::builder()
                    .with_resource(resource)
                    .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                        opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(config.sample_ratio),
                    )))
                    .with_batch_exporter(spans)
                    .build(),
            );
        }
        let meters = meters.build();
        opentelemetry::global::set_meter_provider(meters.clone());
        if let Some(t) = &tracer {
            opentelemetry::global::set_tracer_provider(t.clone());
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
        }
        Ok(Self {
            registry,
            meters,
            tracer,
        })
    }

    /// The tracer provider, when traces are exported.
    pub fn tracer_provider(&self) -> Option<&SdkTracerProvider> {
        self.tracer.as_ref()
    }

    /// The metrics in the Prometheus text format.
    pub fn prometheus_text(&self) -> String {
        render(&self.registry)
    }

    /// Flushes and stops the exporters.
    pub fn shutdown(&self) {
        let _ = self.meters.shutdown();
        if let Some(t) = &self.tracer {
            let _ = t.shutdown();
        }
    }
}

/// `registry` in the Prometheus text format.
fn render(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The broker's instruments.
#[derive(Debug)]
pub struct Metrics {
    /// Lookups of a source by outcome (`hedui.source.requests`), read from
    /// the [`SourceCounts`] of every source.
    pub source_requests: ObservableCounter<u64>,
    /// How long a source took (`hedui.source.duration`, seconds).
    pub source_duration: Histogram<f64>,
    /// Answers served from the cache (`hedui.cache.hits`), read from the
    /// [`SourceCounts`].
    pub cache_hits: ObservableCounter<u64>,
    /// Answers not in the cache (`hedui.cache.misses`), read from the
    /// [`SourceCounts`].
    pub cache_misses: ObservableCounter<u64>,
    /// Circuit breaker state per source: 0 closed, 1 half-open, 2 open
    /// (`hedui.breaker.state`).
    pub breaker_state: Gauge<i64>,
    /// Time spent waiting for a source's rate limit
    /// (`hedui.ratelimit.wait`, seconds).
    pub rate_limit_wait: Histogram<f64>,
    /// Verifications in progress (`hedui.verifications.in_flight`).
    pub in_flight: UpDownCounter<i64>,
    /// Verifications done, by verdict (`hedui.verifications`).
    pub verifications: Counter<u64>,
    /// How long an audit commit took (`hedui.audit.commit.duration`,
    /// seconds).
    pub audit_commit: Histogram<f64>,
    /// Records committed per batch (`hedui.audit.batch.size`).
    pub audit_batch: Histogram<u64>,
    /// gRPC server calls (`rpc.server.duration`, milliseconds, by
    /// `rpc.service`, `rpc.method`, `rpc.grpc.status_code`).
    pub rpc_duration: Histogram<f64>,
}

impl Metrics {
    fn new(meter: &Meter) -> Self {
        let seconds = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        Self {
            source_requests: meter
                .u64_observable_counter("hedui.source.requests")
                .with_description("Calls to a source, by source, status and cache use")
                .with_callback(|observer| {
                    for counts in counted_sources().values() {
                        counts.observe_requests(observer);
                    }
                })
                .build(),
            source_duration: meter
                .f64_histogram("hedui.source.duration")
                .with_unit("s")
                .with_description("How long a source took to answer")
                .with_boundaries(seconds.to_vec())
                .build(),
            cache_hits: meter
                .u64_observable_counter("hedui.cache.hits")
                .with_description("Answers served from the answer cache")
                .with_callback(|observer| {
                    for counts in counted_sources().values() {
                        counts.observe(observer, &counts.cache_hits);
                    }
                })
                .build(),
            cache_misses: meter
                .u64_observable_counter("hedui.cache.misses")
                .with_description("Answers not found in the answer cache")
                .with_callback(|observer| {
                    for counts in counted_sources().values() {
                        counts.observe(observer, &counts.cache_misses);
                    }
                })
                .build(),
            breaker_state: meter
                .i64_gauge("hedui.breaker.state")
                .with_description("Circuit breaker per source: 0 closed, 1 half-open, 2 open")
                .build(),
            rate_limit_wait: meter
                .f64_histogram("hedui.ratelimit.wait")
                .with_unit("s")
                .with_description("Time waited for a source's rate limit")
                .with_boundaries(seconds.to_vec())
                .build(),
            in_flight: meter
                .i64_up_down_counter("hedui.verifications.in_flight")
                .with_description("Verifications in progress")
                .build(),
            verifications: meter
                .u64_counter("hedui.verifications")
                .with_description("Verifications done, by purpose and verdict")
                .build(),
            audit_commit: meter
                .f64_histogram("hedui.audit.commit.duration")
                .with_unit("s")
                .with_description("How long one durable audit commit took")
                .with_boundaries(seconds.to_vec())
                .build(),
            audit_batch: meter
                .u64_histogram("hedui.audit.batch.size")
                .with_description("Audit records committed together")
                .with_boundaries(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
                .build(),
            rpc_duration: meter
                .f64_histogram("rpc.server.duration")
                .with_unit("ms")
                .with_description("Duration of inbound gRPC calls")
                .with_boundaries(vec![
                    1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
                    10000.0, 30000.0,
                ])
                .build(),
        }
    }
}

/// The broker's instruments, on the global meter provider (a no-op one
/// until [`Telemetry::init`]; call that first).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new(&opentelemetry::global::meter_provider().meter("hedui")))
}

/// Every status a lookup ends with, in the order of their values (0 to 9).
const STATUSES: [SourceStatus; 10] = [
    SourceStatus::Unspecified,
    SourceStatus::Ok,
    SourceStatus::NoRecord,
    SourceStatus::Timeout,
    SourceStatus::Unavailable,
    SourceStatus::Error,
    SourceStatus::NotQueried,
    SourceStatus::RateLimited,
    SourceStatus::CircuitOpen,
    SourceStatus::Pending,
];

/// A status as metrics and spans label it (`rate_limited`, `timeout`).
pub fn status_label(status: SourceStatus) -> &'static str {
    match status {
        SourceStatus::Unspecified => "unspecified",
        SourceStatus::Ok => "ok",
        SourceStatus::NoRecord => "no_record",
        SourceStatus::Timeout => "timeout",
        SourceStatus::Unavailable => "unavailable",
        SourceStatus::Error => "error",
        SourceStatus::NotQueried => "not_queried",
        SourceStatus::RateLimited => "rate_limited",
        SourceStatus::CircuitOpen => "circuit_open",
        SourceStatus::Pending => "pending",
    }
}

/// The lookups of one source, counted where they happen and read by the
/// observable counters `hedui.source.requests`, `hedui.cache.hits` and
/// `hedui.cache.misses` when the metrics are collected. A lookup costs two
/// atomic additions: the SDK's counters would hash the attributes and look
/// them up in a locked map on every addition, 28 times per verification
/// (docs/benchmarks.md, S4). One per source id for the life of the
/// process ([`source_counts`]), so the totals never go back.
#[derive(Debug)]
pub struct SourceCounts {
    source: KeyValue,
    /// By status (its value) and cache use (0: asked, 1: from the cache).
    requests: [[AtomicU64; 2]; STATUSES.len()],
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

impl SourceCounts {
    /// A lookup that ended with `status`, served from the cache or not.
    pub fn request(&self, status: SourceStatus, cache_hit: bool) {
        let by_status = usize::try_from(i32::from(status))
            .ok()
            .and_then(|i| self.requests.get(i));
        if let Some(by_status) = by_status {
            by_status[usize::from(cache_hit)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An answer served from the cache (`true`) or not found there.
    pub fn cache(&self, hit: bool) {
        let counter = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn observe_requests(&self, observer: &dyn AsyncInstrument<u64>) {
        for (status, by_hit) in STATUSES.iter().zip(&self.requests) {
            for (hit, counter) in [false, true].into_iter().zip(by_hit) {
                let n = counter.load(Ordering::Relaxed);
                if n > 0 {
                    observer.observe(
                        n,
                        &[
                            self.source.clone(),
                            KeyValue::new("status", status_label(*status)),
                            KeyValue::new("cache_hit", hit),
                        ],
                    );
                }
            }
        }
    }

    fn observe(&self, observer: &dyn AsyncInstrument<u64>, counter: &AtomicU64) {
        let n = counter.load(Ordering::Relaxed);
        if n > 0 {
            observer.observe(n, std::slice::from_ref(&self.source));
        }
    }
}

fn counted_sources() -> std::sync::MutexGuard<'static, BTreeMap<String, Arc<SourceCounts>>> {
    static SOURCES: Mutex<BTreeMap<String, Arc<SourceCounts>>> = Mutex::new(BTreeMap::new());
    SOURCES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The lookup counts of source `id` (shared by every guard of that id).
pub fn source_counts(id: &str) -> Arc<SourceCounts> {
    let mut sources = counted_sources();
    Arc::clone(sources.entry(id.to_owned()).or_insert_with(|| {
        Arc::new(SourceCounts {
            source: source(id),
            requests: Default::default(),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
        })
    }))
}

/// The W3C `traceparent` of `span`, when it is part of an exported trace
/// (`None` when nothing is traced).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Makes `span` a child of the trace a caller sent in `headers`
/// (`traceparent`, `tracestate`), when it sent one.
pub fn adopt_caller_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
    let _ = span.set_parent(parent);
}

/// A `source` attribute.
pub fn source(id: &str) -> KeyValue {
    // Shared, so that cloning the attribute for each measurement does not
    // copy the id.
    KeyValue::new("source", std::sync::Arc::<str>::from(id))
}

#[cfg(test)]
mod tests {
    use opentelemetry::metrics::MeterProvider as _;

    use super::*;

    #[test]
    fn bad_settings_name_the_key() {
        let ok = TelemetryConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let e = TelemetryConfig {
            otlp_endpoint: Some("collector:4317".into()),
            ..ok.clone()
        };
        assert!(
            e.validate()
                .unwrap_err()
                .starts_with("telemetry.otlp_endpoint")
        );
        let e = TelemetryConfig {
            sample_ratio: 2.0,
            ..ok
        };
        assert!(
            e.validate()
                .unwrap_err()
                .starts_with("telemetry.sample_ratio")
        );
    }

    #[test]
    fn instruments_render_with_prometheus_names() {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()
            .unwrap();
        let provider = SdkMeterProvider::builder().with_reader(exporter).build();
        let m = Metrics::new(&provider.meter("hedui"));
        let counts = source_counts("render-test");
        counts.request(SourceStatus::Ok, false);
        counts.request(SourceStatus::Ok, true);
        counts.request(SourceStatus::Pending, false);
        counts.cache(true);
        m.source_duration.record(0.02, &[source("traffic-police")]);
        m.rpc_duration
            .record(3.0, &[KeyValue::new("rpc.method", "Verify")]);
        m.in_flight.add(1, &[]);
        let text = render(&registry);
        for name in [
            "hedui_source_duration_seconds_bucket{",
            "rpc_server_duration_milliseconds_bucket{",
            "hedui_verifications_in_flight",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        // The lookup counts, by source, status and cache use. The counts
        // are the process's: other tests count lookups of other sources,
        // and only this test's source is read.
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start) && l.contains("source=\"render-test\""))
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        };
        for (series, n) in [
            (
                "hedui_source_requests_total{cache_hit=\"false\",source=\"render-test\",status=\"ok\"",
                "1",
            ),
            (
                "hedui_source_requests_total{cache_hit=\"true\",source=\"render-test\",status=\"ok\"",
                "1",
            ),
            (
                "hedui_source_requests_total{cache_hit=\"false\",source=\"render-test\",status=\"pending\"",
                "1",
            ),
            ("hedui_cache_hits_total{", "1"),
        ] {
            assert_eq!(line(series).as_deref(), Some(n), "{series} in\n{text}");
        }
        assert_eq!(line("hedui_cache_misses_total{"), None, "{text}");
    }

    #[test]
    fn statuses_are_listed_in_the_order_of_their_values() {
        for (i, status) in STATUSES.iter().enumerate() {
            assert_eq!(usize::try_from(i32::from(*status)).unwrap(), i);
        }
        assert!(SourceStatus::try_from(i32::try_from(STATUSES.len()).unwrap()).is_err());
    }

    #[test]
    fn a_callers_trace_goes_on_through_the_broker() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;
        let provider = SdkTracerProvider::builder().build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let mut headers = http::HeaderMap::new();
            headers.insert("traceparent", caller.parse().unwrap());
            let rpc = tracing::info_span!("rpc");
            adopt_caller_trace(&rpc, &headers);
            let source = rpc.in_scope(|| tracing::info_span!("source"));
            let sent = traceparent(&source).expect("a traced span has a traceparent");
            // The same trace, a new span: the department's spans join it.
            assert!(
                sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{sent}"
            );
            assert!(!sent.contains("00f067aa0ba902b7"), "{sent}");
        });
        // Nothing traced: nothing sent.
        assert_eq!(traceparent(&tracing::info_span!("untraced")), None);
    }
}
