//! The broker hop inside the trace (docs/telemetry.md, "The broker hop"):
//! for a sampled fraction of the appends whose PRODUCER span is sampled,
//! the append asks nats-server (2.11+ message tracing) to report what it
//! did with the message, by a `Nats-Trace-Dest` header naming this
//! process's own report subject. Every server the message passes reports once,
//! there, with timestamped events (ingress, subject mapping, JetStream
//! storage, egress); each report becomes one `nats.server <name>` span,
//! a child of the PRODUCER span, with the events as span events.
//!
//! The trace stops at the stream: a JetStream consumer's delivery is a new
//! message the server does not trace, so the hop to the projector is the
//! projection span's link, as before. Off by default (`BROKER_TRACE_RATIO`);
//! a traced append costs the server one report and this process one
//! parse and span.
//!
//! A server refuses a message whose `Nats-Trace-Dest` its publisher may
//! not publish to — the append itself, not just the trace. So the reports
//! go to a subject of the event log's prefix (`<prefix>.trace.<id>`, which
//! deploy/'s write-service user may use, and the event stream does not
//! capture), and tracing starts only after a trace-only probe
//! (`Nats-Trace-Only`) sent to that subject came back as a report. Sent
//! there, a probe a server does not understand (before 2.11) reaches only
//! this process, never the event log.

use std::time::{Duration, SystemTime};

use futures::StreamExt;
use opentelemetry::{
    Context, KeyValue, global,
    trace::{Span, SpanContext, SpanKind, Status as SpanStatus, TraceContextExt, Tracer},
};
use serde_json::Value;
use shared::{event_log::EventLogArgs, grpc_telemetry::CQRS_SIDE, propagation};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::event_log::{EventLog, EventLogError, failed};

/// The header that asks the servers for a report, and where to send it.
pub const TRACE_DEST: &str = "Nats-Trace-Dest";

/// The header that asks for the report only: the message goes nowhere.
const TRACE_ONLY: &str = "Nats-Trace-Only";

/// How long the probe's report may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which appends ask for the broker's report, and where it goes.
#[derive(Debug, Clone)]
pub struct BrokerTracing {
    /// This process's subject for the reports.
    dest: String,
    /// Of the sampled appends, those whose trace id falls below this
    /// threshold (as the trace-id ratio sampler draws).
    threshold: u64,
}

impl BrokerTracing {
    /// If `ratio` > 0, spans are exported and the servers report
    /// (nats-server 2.11+, and the NATS user may use `<prefix>.trace.*`):
    /// subscribes to this process's report subject and turns the reports
    /// into spans in the background (the task ends with the connection).
    /// Else `None`, saying why.
    pub async fn start(
        client: &async_nats::Client,
        names: &EventLogArgs,
        log: &EventLog,
        ratio: f64,
    ) -> Result<Option<Self>, EventLogError> {
        if ratio <= 0.0 {
            return Ok(None);
        }
        if !shared::telemetry::spans_exported() {
            tracing::info!("BROKER_TRACE_RATIO is set but spans are not exported: broker tracing is off");
            return Ok(None);
        }
        let dest = format!("{}.trace.{}", names.subject_prefix, uuid::Uuid::new_v4().simple());
        if log.captures(&dest) {
            // The reports would be kept in the event log forever.
            tracing::warn!(subject = %dest, "the event stream captures the broker trace reports: broker tracing is off");
            return Ok(None);
        }
        let mut reports = client.subscribe(dest.clone()).await.map_err(|e| failed("subscribe to broker traces", e))?;
        let mut probe = async_nats::HeaderMap::new();
        probe.insert(TRACE_DEST, dest.as_str());
        probe.insert(TRACE_ONLY, "true");
        client
            .publish_with_headers(dest.clone(), probe, bytes::Bytes::new())
            .await
            .map_err(|e| failed("probe broker tracing", e))?;
        // A server that ignores the headers delivers the probe itself.
        let reported = tokio::time::timeout(PROBE_TIMEOUT, reports.next())
            .await
            .is_ok_and(|report| report.is_some_and(|report| is_report(&report.payload)));
        if !reported {
            tracing::warn!(
                subject = %dest,
                "BROKER_TRACE_RATIO is set but the NATS servers did not report a trace-only probe (nats-server \
                 older than 2.11, or this NATS user may not publish to <prefix>.trace.*): broker tracing is off"
            );
            return Ok(None);
        }
        tokio::spawn(async move {
            let tracer = global::tracer("write-service");
            while let Some(report) = reports.next().await {
                match Report::parse(&report.payload) {
                    Some(report) => report.record(&tracer),
                    None => tracing::debug!("a broker trace report was not understood"),
                }
            }
        });
        Ok(Some(Self { dest, threshold: threshold(ratio) }))
    }

    /// Where the servers should report on an append whose PRODUCER span
    /// is `producer`: `None` unless it is sampled and drawn.
    pub fn dest_for(&self, producer: &SpanContext) -> Option<&str> {
        let drawn = producer.is_sampled() && high_half(producer) < self.threshold;
        drawn.then_some(self.dest.as_str())
    }
}

/// Whether `payload` is a server's trace report.
fn is_report(payload: &[u8]) -> bool {
    serde_json::from_slice::<Value>(payload)
        .is_ok_and(|report| report["server"].is_object() && report["events"].is_array())
}

fn threshold(ratio: f64) -> u64 {
    if ratio >= 1.0 { u64::MAX } else { (ratio * u64::MAX as f64) as u64 }
}

/// The trace id's high 64 bits. Not the low ones: the SDK's trace-id
/// ratio sampler draws from those, and drawing from the same bits would
/// make the two ratios overlap (sampler 0.1 with broker ratio 0.1 would
/// trace every sampled append, not a tenth).
fn high_half(span: &SpanContext) -> u64 {
    let bytes = span.trace_id().to_bytes();
    u64::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]])
}

/// One server's report on one traced message.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The PRODUCER span, from the message's `traceparent`.
    pub producer: SpanContext,
    pub server: String,
    pub version: String,
    pub cluster: Option<String>,
    /// The `Nats-Trace-Hop` of a server the message was forwarded to.
    pub hop: Option<String>,
    pub events: Vec<Event>,
}

/// One thing a server did with the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `ingress`, `subject_mapping`, `stream_export`, `service_import`,
    /// `jetstream.stored` or `egress`.
    pub name: &'static str,
    pub at: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub error: Option<String>,
}

impl Report {
    /// Reads a report (the server's `MsgTraceEvent` JSON); `None` if it is
    /// not one or names no PRODUCER span.
    pub fn parse(json: &[u8]) -> Option<Self> {
        let report: Value = serde_json::from_slice(json).ok()?;
        let request_header = |name: &str| report["request"]["header"][name][0].as_str();
        let producer = request_header("traceparent").and_then(propagation::from_traceparent)?;
        let server = &report["server"];
        let text = |value: &Value| value.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let events = report["events"].as_array()?.iter().filter_map(Event::parse).collect::<Vec<_>>();
        (!events.is_empty()).then(|| Self {
            producer,
            server: text(&server["name"]).unwrap_or_else(|| "nats-server".into()),
            version: text(&server["ver"]).unwrap_or_default(),
            cluster: text(&server["cluster"]),
            hop: request_header("Nats-Trace-Hop").map(str::to_owned),
            events,
        })
    }

    /// Records the report as a span under the PRODUCER span, from the first
    /// event to the last.
    fn record(&self, tracer: &global::BoxedTracer) {
        let (Some(first), Some(last)) = (self.events.first(), self.events.iter().map(|e| e.at).max()) else { return };
        let mut attributes = vec![
            KeyValue::new(CQRS_SIDE, "write"),
            KeyValue::new("messaging.system", "nats"),
            KeyValue::new("nats.server.name", self.server.clone()),
            KeyValue::new("nats.server.version", self.version.clone()),
        ];
        attributes.extend(self.cluster.clone().map(|cluster| KeyValue::new("nats.server.cluster", cluster)));
        attributes.extend(self.hop.clone().map(|hop| KeyValue::new("nats.trace.hop", hop)));
        let parent = Context::new().with_remote_span_context(self.producer.clone());
        let mut span = tracer
            .span_builder(format!("nats.server {}", self.server))
            .with_kind(SpanKind::Internal)
            .with_start_time(first.at)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        for event in &self.events {
            span.add_event_with_timestamp(event.name, event.at, event.attributes.clone());
            if let Some(error) = &event.error {
                span.set_status(SpanStatus::error(error.clone()));
            }
        }
        span.end_with_timestamp(last);
    }
}

impl Event {
    fn parse(event: &Value) -> Option<Self> {
        let at = OffsetDateTime::parse(event["ts"].as_str()?, &Rfc3339).ok()?.into();
        let text = |key: &str| event[key].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let mut attributes = Vec::new();
        let mut add = |name: &'static str, key: &str| {
            if let Some(value) = text(key) {
                attributes.push(KeyValue::new(name, value));
            }
        };
        let name = match event["type"].as_str()? {
            "in" => {
                add("nats.account", "acc");
                add("messaging.destination.name", "subj");
                add("nats.connection.name", "name");
                "ingress"
            }
            "sm" => {
                add("nats.subject_mapping.to", "to");
                "subject_mapping"
            }
            "se" => {
                add("nats.account", "acc");
                add("nats.stream_export.to", "to");
                "stream_export"
            }
            "si" => {
                add("nats.account", "acc");
                add("nats.service_import.to", "to");
                "service_import"
            }
            "js" => {
                add("nats.jetstream.stream", "stream");
                add("messaging.destination.name", "subject");
                "jetstream.stored"
            }
            "eg" => {
                add("nats.connection.name", "name");
                add("nats.subscription", "sub");
                "egress"
            }
            _ => return None,
        };
        if name == "egress" {
            attributes.push(KeyValue::new("nats.egress.kind", connection_kind(event["kind"].as_i64())));
        }
        if event["nointerest"].as_bool() == Some(true) {
            attributes.push(KeyValue::new("nats.jetstream.no_interest", true));
        }
        Some(Self { name, at, attributes, error: text("error") })
    }
}

/// The server's connection kinds (ADR-41).
fn connection_kind(kind: Option<i64>) -> &'static str {
    match kind {
        Some(0) => "client",
        Some(1) => "route",
        Some(2) => "gateway",
        Some(3) => "system",
        Some(4) => "leafnode",
        Some(5) => "jetstream",
        Some(6) => "account",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    /// What nats-server 2.15.1 sent for a traced append to a stream.
    const STORED: &str = r#"{"server":{"name":"n1","host":"127.0.0.1","id":"NDX","ver":"2.15.1","jetstream":true,"flags":7,"seq":18,"time":"2026-12-06T10:13:29.231468248Z"},"request":{"header":{"traceparent":["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],"Nats-Trace-Dest":["bank.trace.x"]},"msgsize":87},"events":[{"type":"in","ts":"2026-12-06T10:13:29.231221426Z","kind":0,"cid":6,"acc":"APP","subj":"ev.a"},{"type":"js","ts":"2026-12-06T10:13:29.231273947Z","stream":"S","subject":"ev.a"}]}"#;

    fn sampled(trace_id: &str) -> SpanContext {
        SpanContext::new(
            TraceId::from_hex(trace_id).unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        )
    }

    #[test]
    fn a_servers_report_names_the_producer_span_and_what_the_server_did_when() {
        let report = Report::parse(STORED.as_bytes()).unwrap();
        assert_eq!(report.producer.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!((report.server.as_str(), report.version.as_str(), report.hop), ("n1", "2.15.1", None));
        let names: Vec<&str> = report.events.iter().map(|e| e.name).collect();
        assert_eq!(names, ["ingress", "jetstream.stored"]);
        let took = report.events[1].at.duration_since(report.events[0].at).unwrap();
        assert_eq!(took.as_nanos(), 52_521);
        assert!(report.events[1].attributes.contains(&KeyValue::new("nats.jetstream.stream", "S")));
    }

    #[test]
    fn only_a_servers_report_passes_the_probe() {
        assert!(is_report(STORED.as_bytes()));
        assert!(!is_report(b""), "the probe itself, from a server that ignored the headers");
        assert!(!is_report(br#"{"events": []}"#));
    }

    #[test]
    fn a_report_without_a_producer_or_events_is_none() {
        assert_eq!(Report::parse(STORED.replace("traceparent", "other").as_bytes()), None);
        assert_eq!(Report::parse(STORED.replace("\"ts\"", "\"at\"").as_bytes()), None);
        assert_eq!(Report::parse(b"not json"), None);
    }

    #[test]
    fn only_sampled_appends_are_drawn_by_ratio() {
        let tracing = |ratio| BrokerTracing { dest: "bank.trace.x".into(), threshold: threshold(ratio) };
        let low = sampled("00000000000000014bf92f3577b34da6");
        let high = sampled("ffffffffffffff004bf92f3577b34da6");
        assert_eq!(tracing(1.0).dest_for(&high), Some("bank.trace.x"));
        assert_eq!(tracing(0.5).dest_for(&low), Some("bank.trace.x"));
        assert_eq!(tracing(0.5).dest_for(&high), None);
        let unsampled =
            SpanContext::new(low.trace_id(), low.span_id(), TraceFlags::default(), false, TraceState::default());
        assert_eq!(tracing(1.0).dest_for(&unsampled), None);
    }
}
