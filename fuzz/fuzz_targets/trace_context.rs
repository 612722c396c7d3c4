//! `traceparent`, `tracestate` and `baggage` as a caller or a foreign
//! producer may send them. Extraction never panics, reads the same context
//! from gRPC (HTTP) headers as from NATS headers, and a context it accepts
//! survives being injected into an event and read back.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::TraceContextExt;
use shared::propagation;

#[derive(Arbitrary, Debug)]
struct Headers<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
    baggage: Option<&'a str>,
}

fuzz_target!(|input: Headers<'_>| {
    let pairs: Vec<(&str, &str)> =
        [("traceparent", Some(input.traceparent)), ("tracestate", input.tracestate), ("baggage", input.baggage)]
            .into_iter()
            .filter_map(|(name, value)| value.map(|value| (name, value)))
            .collect();

    // A NATS header cannot hold `\r` or `\n` (the protocol is line-based).
    let mut nats = async_nats::HeaderMap::new();
    for (name, value) in &pairs {
        match value.parse::<async_nats::HeaderValue>() {
            Ok(value) => nats.insert(*name, value),
            Err(_) => return,
        }
    }
    let from_nats = propagation::extract_from_nats(&nats);
    let span = from_nats.span().span_context().clone();
    if span.is_valid() {
        // Only a traceparent of the W3C shape is taken.
        let fields: Vec<&str> = input.traceparent.trim().split('-').collect();
        assert!(fields.len() >= 4 && fields[1].len() == 32 && fields[2].len() == 16, "{:?}", input.traceparent);
        let mut reinjected = async_nats::HeaderMap::new();
        propagation::inject_into_nats(&from_nats, &mut reinjected);
        let again = propagation::extract_from_nats(&reinjected);
        assert_eq!(again.span().span_context().trace_id(), span.trace_id());
        assert_eq!(again.span().span_context().span_id(), span.span_id());
        assert_eq!(again.span().span_context().trace_flags(), span.trace_flags());
    }

    // gRPC metadata only carries visible ASCII (the extractor ignores
    // anything else); where the values fit, both carriers agree.
    let mut http = http::HeaderMap::new();
    for (name, value) in &pairs {
        match http::HeaderValue::from_str(value) {
            Ok(value) if value.to_str().is_ok() => http.insert(*name, value),
            _ => return,
        };
    }
    let from_http = propagation::extract_from_http(&http);
    assert_eq!(from_http.span().span_context(), &span);
});
