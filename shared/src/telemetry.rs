//! Telemetry bootstrap: one call installs logs (`tracing`), traces and
//! metrics (OpenTelemetry over OTLP/gRPC) and returns a guard that flushes
//! them on drop.
//!
//! Configuration is the OpenTelemetry SDK's own environment variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_METRIC_EXPORT_INTERVAL`, `OTEL_BSP_*`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, ...), plus `OTEL_SDK_DISABLED=true` to switch
//! traces and metrics off, `OTEL_TRACES_EXPORTER` = `otlp` | `none`, and
//! `OTEL_METRICS_EXPORTER` = `otlp` (push, the
//! default) | `prometheus` (a scrape endpoint on
//! `OTEL_EXPORTER_PROMETHEUS_HOST`:`OTEL_EXPORTER_PROMETHEUS_PORT`,
//! default `localhost:9464`, what `deploy/` uses) | `none`. Logs are
//! filtered with `RUST_LOG`. One addition to the standard samplers: a root span linked to another trace follows
//! that trace's sampling decision ([`FollowLinkedTrace`]).

use std::time::Duration;

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{KeyValue, global};
use opentelemetry_otlp::{RetryPolicy, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    metrics::SdkMeterProvider,
    trace::{self, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample},
};
use opentelemetry_semantic_conventions::resource::{SERVICE_INSTANCE_ID, SERVICE_VERSION};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// Why telemetry could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An OTLP exporter could not be built from the `OTEL_*` settings.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// `RUST_LOG` is malformed, or a global subscriber was already set.
    #[error("cannot install the log subscriber: {0}")]
    Logs(String),
    /// An `OTEL_*` variable has a value this build does not support.
    #[error("{variable}={value:?}: {expected}")]
    Setting { variable: &'static str, value: String, expected: &'static str },
    /// The Prometheus endpoint's address cannot be listened on.
    #[error("cannot serve Prometheus metrics on {address}: {source}")]
    MetricsEndpoint { address: String, source: std::io::Error },
    /// The Prometheus exporter could not be registered.
    #[error("cannot build the Prometheus exporter: {0}")]
    Prometheus(#[from] opentelemetry_sdk::error::OTelSdkError),
}

/// Keeps the trace and metric pipelines alive; flushes them when dropped.
#[must_use = "telemetry is flushed and shut down when the guard is dropped"]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

/// Whether this process exports its spans (set by [`init`]).
static SPANS_EXPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans leave this process: only then is a span's context worth
/// recording anywhere (a read-model row's provenance, a broker trace).
/// Without an exporter spans still get ids, which point nowhere.
pub fn spans_exported() -> bool {
    SPANS_EXPORTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Installs logging, tracing and metrics for the binary `service_name`
/// (the default `service.name` unless `OTEL_SERVICE_NAME` says otherwise).
pub fn init(service_name: &'static str, service_version: &'static str) -> Result<TelemetryGuard, TelemetryError> {
    init_logs()?;
    if sdk_disabled() {
        // Nothing is exported, but spans still get ids: the event log's
        // contract is that every event carries a `traceparent`.
        tracing::info!("OTEL_SDK_DISABLED=true: traces and metrics are not exported");
        let tracer_provider = SdkTracerProvider::builder().build();
        global::set_tracer_provider(tracer_provider.clone());
        return Ok(TelemetryGuard { tracer_provider: Some(tracer_provider), meter_provider: None });
    }
    let resource = resource(service_name, service_version);
    if let Ok(protocol) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL")
        && protocol != "grpc"
    {
        tracing::warn!(%protocol, "only OTLP over gRPC is built in; exporting with grpc");
    }

    // Bounded retries: with no collector running, shutdown must stay quick.
    let retries = RetryPolicy::recommended().with_max_retries(1);
    let tracer_provider = SdkTracerProvider::builder()
        .with_sampler(FollowLinkedTrace(trace::Config::default().sampler))
        .with_resource(resource.clone());
    let tracer_provider = if traces_exported()? {
        SPANS_EXPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
        let span_exporter =
            opentelemetry_otlp::SpanExporter::builder().with_tonic().with_retry_policy(retries.clone()).build()?;
        tracer_provider.with_batch_exporter(span_exporter).build()
    } else {
        tracer_provider.build()
    };
    global::set_tracer_provider(tracer_provider.clone());

    let meter_provider = match metrics_exporter()? {
        MetricsExporter::Otlp => {
            let exporter =
                opentelemetry_otlp::MetricExporter::builder().with_tonic().with_retry_policy(retries).build()?;
            Some(SdkMeterProvider::builder().with_periodic_exporter(exporter).with_resource(resource).build())
        }
        MetricsExporter::Prometheus { host, port } => Some(prometheus_endpoint(&host, port, resource)?),
        MetricsExporter::None => None,
    };
    if let Some(provider) = &meter_provider {
        global::set_meter_provider(provider.clone());
    }

    Ok(TelemetryGuard { tracer_provider: Some(tracer_provider), meter_provider })
}

/// Whether spans go anywhere: `OTEL_TRACES_EXPORTER` = `otlp` (the
/// default) | `none` (spans still get ids, for the `traceparent` every
/// event carries; metrics are unaffected: a local run serves them for
/// `cqrs-top` without any collector).
fn traces_exported() -> Result<bool, TelemetryError> {
    let value = std::env::var("OTEL_TRACES_EXPORTER").map(|v| v.trim().to_owned()).unwrap_or_default();
    match value.as_str() {
        "" | "otlp" => Ok(true),
        "none" => Ok(false),
        _ => Err(TelemetryError::Setting { variable: "OTEL_TRACES_EXPORTER", value, expected: "one of otlp, none" }),
    }
}

/// Where metrics go: `OTEL_METRICS_EXPORTER` (the SDK specification's
/// variable; one exporter at a time here).
enum MetricsExporter {
    Otlp,
    Prometheus { host: String, port: u16 },
    None,
}

fn metrics_exporter() -> Result<MetricsExporter, TelemetryError> {
    let setting = |variable: &'static str, default: &str| {
        std::env::var(variable).map(|v| v.trim().to_owned()).ok().filter(|v| !v.is_empty()).unwrap_or(default.into())
    };
    match setting("OTEL_METRICS_EXPORTER", "otlp").as_str() {
        "otlp" => Ok(MetricsExporter::Otlp),
        "none" => Ok(MetricsExporter::None),
        "prometheus" => {
            let port = setting("OTEL_EXPORTER_PROMETHEUS_PORT", "9464");
            Ok(MetricsExporter::Prometheus {
                host: setting("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost"),
                port: port.parse().map_err(|_| TelemetryError::Setting {
                    variable: "OTEL_EXPORTER_PROMETHEUS_PORT",
                    value: port,
                    expected: "a TCP port number",
                })?,
            })
        }
        other => Err(TelemetryError::Setting {
            variable: "OTEL_METRICS_EXPORTER",
            value: other.to_owned(),
            expected: "one of otlp, prometheus, none",
        }),
    }
}

/// A meter provider read by a Prometheus scrape of `http://host:port/metrics`.
///
/// Names are the exporter's defaults (dots become `_`, a declared unit is
/// appended, counters end in `_total`): the same as the OpenTelemetry
/// Collector's and Prometheus' own OTLP translation make of the same
/// metrics, so dashboards and rules work whichever way metrics travel.
fn prometheus_endpoint(host: &str, port: u16, resource: Resource) -> Result<SdkMeterProvider, TelemetryError> {
    let address = format!("{host}:{port}");
    let endpoint_error = |source| TelemetryError::MetricsEndpoint { address: address.clone(), source };
    let listener = std::net::TcpListener::bind(&address).map_err(endpoint_error)?;
    listener.set_nonblocking(true).map_err(endpoint_error)?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| endpoint_error(std::io::Error::other(format!("no async runtime to serve it on: {e}"))))?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(endpoint_error)?
    };
    if let Ok(bound) = listener.local_addr() {
        tracing::info!("metrics: Prometheus endpoint on http://{bound}/metrics");
    }
    let registry = prometheus::Registry::new();
    let reader = opentelemetry_prometheus::exporter().with_registry(registry.clone()).build()?;
    runtime.spawn(crate::metrics_endpoint::serve(listener, registry));
    Ok(SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build())
}

/// The sampler of `OTEL_TRACES_SAMPLER`, except for a root span that links
/// to another trace (the projector's CONSUMER spans, linked to the
/// PRODUCER span in the event): that one follows the linked trace's
/// sampling decision. Sampled on its own at ratio r, only about r² of
/// producer/consumer pairs would both survive; this way every kept
/// command trace keeps its projection, and a dropped one drops it too.
#[derive(Debug, Clone)]
struct FollowLinkedTrace(Box<dyn ShouldSample>);

impl ShouldSample for FollowLinkedTrace {
    fn should_sample(
        &self,
        parent: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let is_root = parent.is_none_or(|cx| !cx.span().span_context().is_valid());
        match links.first().map(|link| &link.span_context) {
            Some(linked) if is_root && linked.is_valid() => SamplingResult {
                decision: if linked.is_sampled() { SamplingDecision::RecordAndSample } else { SamplingDecision::Drop },
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            },
            _ => self.0.should_sample(parent, trace_id, name, kind, attributes, links),
        }
    }
}

/// Installs only the log subscriber (`RUST_LOG`); `init` calls it too.
/// Each line written inside a span carries its `trace_id` and `span_id`.
pub fn init_logs() -> Result<(), TelemetryError> {
    // The exporters' own transport must not log (or trace) itself at info;
    // the SDK's own warnings (e.g. a failed export, once per batch) stay.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            EnvFilter::try_new(
                "info,h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn,\
                 opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn",
            )
        })
        .map_err(|e| TelemetryError::Logs(e.to_string()))?;
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .event_format(WithTraceIds(tracing_subscriber::fmt::format())),
        )
        .try_init()
        .map_err(|e| TelemetryError::Logs(e.to_string()))
}

/// Prefixes a log line with the ids of the OpenTelemetry span it was
/// written in (the hot-path spans are OpenTelemetry spans, not `tracing`
/// spans, so the fmt layer cannot see them by itself).
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            write!(writer, "trace_id={} span_id={} ", span_context.trace_id(), span_context.span_id())?;
        }
        self.0.format_event(ctx, writer, event)
    }
}

fn sdk_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn resource(service_name: &'static str, service_version: &'static str) -> Resource {
    // Resource::builder() already reads OTEL_SERVICE_NAME and
    // OTEL_RESOURCE_ATTRIBUTES; the binary's name is only the fallback.
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new(SERVICE_VERSION, service_version),
        KeyValue::new(SERVICE_INSTANCE_ID, uuid::Uuid::new_v4().to_string()),
    ]);
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name(service_name);
    }
    builder.build()
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Spans first: metric exports may describe the same requests.
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("flushing traces on exit failed: {error}");
        }
        if let Some(provider) = self.meter_provider.take()
            && let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("flushing metrics on exit failed: {error}");
        }
    }
}
