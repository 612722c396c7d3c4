//! W3C trace-context and baggage propagation in and out of gRPC metadata
//! (HTTP/2 headers); into NATS message headers only the `traceparent`.
//! Coming in either way, a `traceparent` of the wrong shape is ignored
//! (docs/adr/0009).
//!
//! The propagator is fixed to W3C TraceContext + Baggage rather than taken
//! from the global one: it is part of the event log's contract (the
//! projector reads what the write side wrote), so it must not depend on
//! whether or how telemetry was initialised.

use std::sync::LazyLock;

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![Box::new(TraceContextPropagator::new()), Box::new(BaggagePropagator::new())])
});

/// The context a gRPC (HTTP) request carries; a missing or malformed
/// `traceparent` yields an empty context, so the server starts a new trace.
pub fn extract_from_http(headers: &http::HeaderMap) -> Context {
    PROPAGATOR.extract(&WellFormed(opentelemetry_http::HeaderExtractor(headers)))
}

/// Writes `cx` into a gRPC request's metadata (what a client sends).
pub fn inject_into_grpc(cx: &Context, metadata: &mut tonic::metadata::MetadataMap) {
    PROPAGATOR.inject_context(cx, &mut GrpcMetadataInjector(metadata));
}

/// Writes `cx`'s `traceparent` into NATS message headers, and nothing
/// else. Events are kept forever and can never be deleted, so they carry
/// only what the projection needs to link to the producer: not the
/// caller's `tracestate` or `baggage` (kilobytes of whatever a client
/// sends, user ids and session tokens included), which nothing downstream
/// reads.
pub fn inject_into_nats(cx: &Context, headers: &mut async_nats::HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut OnlyTraceparent(NatsHeaderInjector(headers)));
}

/// The context a NATS message carries (see [`extract_from_http`]).
pub fn extract_from_nats(headers: &async_nats::HeaderMap) -> Context {
    PROPAGATOR.extract(&WellFormed(NatsHeaderExtractor(headers)))
}

/// A span context as the read model stores it (provenance of a row): its
/// W3C `traceparent`, `00-<trace id>-<span id>-<flags>`; `None` for an
/// invalid context (no span, or telemetry off).
pub fn to_traceparent(span: &SpanContext) -> Option<String> {
    span.is_valid().then(|| format!("00-{}-{}-{:02x}", span.trace_id(), span.span_id(), span.trace_flags().to_u8()))
}

/// The span context a stored `traceparent` names; `None` if it is not a
/// well-formed one.
pub fn from_traceparent(traceparent: &str) -> Option<SpanContext> {
    // Read per returned row (a history page holds up to 1,000): the fields
    // are parsed directly, without a propagator and a `Context` each.
    if !is_well_formed_traceparent(traceparent) {
        return None;
    }
    let mut fields = traceparent.trim().split('-').skip(1);
    let trace_id = TraceId::from_hex(fields.next()?).ok()?;
    let span_id = SpanId::from_hex(fields.next()?).ok()?;
    let flags = u8::from_str_radix(fields.next()?, 16).ok()?;
    let span = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, TraceState::default());
    span.is_valid().then_some(span)
}

/// Hides a `traceparent` that is not of the W3C shape. The SDK's parser
/// checks the fields' values but not their lengths: it takes
/// `00-3-32-01` as trace id 0x3, span id 0x32 (found by the trace_context
/// fuzz target), where the specification says to ignore the header and
/// start a new trace.
struct WellFormed<E>(E);

impl<E: Extractor> Extractor for WellFormed<E> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key)?;
        (key != TRACEPARENT || is_well_formed_traceparent(value)).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }
}

const TRACEPARENT: &str = "traceparent";

/// `version-traceid-parentid-flags`, lowercase hex of 2, 32, 16 and 2
/// digits; version `ff` is invalid and version `00` has exactly these four
/// fields (later versions may append more). Surrounding whitespace is
/// allowed, as the SDK trims it.
fn is_well_formed_traceparent(value: &str) -> bool {
    let hex =
        |field: &str, len: usize| field.len() == len && field.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let mut fields = value.trim().split('-');
    match (fields.next(), fields.next(), fields.next(), fields.next()) {
        (Some(version), Some(trace_id), Some(span_id), Some(flags)) => {
            hex(version, 2)
                && version != "ff"
                && hex(trace_id, 32)
                && hex(span_id, 16)
                && hex(flags, 2)
                && (version != "00" || fields.next().is_none())
        }
        _ => false,
    }
}

struct GrpcMetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for GrpcMetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(value))
        {
            self.0.insert(key, value);
        }
    }
}

struct NatsHeaderInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // async-nats panics on a name or value that cannot travel in a
        // header (`\r`, `\n`); the propagators never produce one, but a
        // context must never fail a publish, so such a field is dropped.
        if let (Ok(key), Ok(value)) = (key.parse::<async_nats::HeaderName>(), value.parse::<async_nats::HeaderValue>())
        {
            self.0.insert(key, value);
        }
    }
}

/// Passes on `traceparent` only (the trace-context propagator also writes
/// `tracestate`).
struct OnlyTraceparent<I>(I);

impl<I: Injector> Injector for OnlyTraceparent<I> {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0.set(key, value);
        }
    }
}

struct NatsHeaderExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn a_context_survives_a_round_trip_through_nats_headers() {
        let span_context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(span_context.clone());
        let mut headers = async_nats::HeaderMap::new();
        inject_into_nats(&cx, &mut headers);

        assert_eq!(
            headers.get("traceparent").map(|v| v.as_str()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        let extracted = extract_from_nats(&headers);
        assert_eq!(extracted.span().span_context().trace_id(), span_context.trace_id());
        assert_eq!(extracted.span().span_context().span_id(), span_context.span_id());
    }

    #[test]
    fn a_traceparent_with_fields_of_the_wrong_length_yields_no_parent() {
        for malformed in [
            "00-3-32-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("traceparent", malformed);
            assert!(!extract_from_nats(&headers).span().span_context().is_valid(), "{malformed}");
        }
        for well_formed in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            " 01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future ",
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert("traceparent", http::HeaderValue::from_static(well_formed));
            assert!(extract_from_http(&headers).span().span_context().is_valid(), "{well_formed}");
        }
    }

    #[test]
    fn a_stored_traceparent_names_the_span_it_was_made_from() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let stored = to_traceparent(&span).unwrap();
        assert_eq!(stored, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let read = from_traceparent(&stored).unwrap();
        assert_eq!((read.trace_id(), read.span_id(), read.is_sampled()), (span.trace_id(), span.span_id(), true));
        assert_eq!(to_traceparent(&SpanContext::empty_context()), None);
        assert_eq!(from_traceparent("00-3-32-01"), None);
    }

    #[test]
    fn a_malformed_traceparent_yields_no_parent() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static("00-zzzz-not-a-trace"));
        let cx = extract_from_http(&headers);
        assert!(!cx.span().span_context().is_valid());
    }
}
