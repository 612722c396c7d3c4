//! The broker hop inside the trace (docs/telemetry.md, "The broker hop"):
//! with BROKER_TRACE_RATIO, a sampled append's trace holds what the pinned
//! nats-server (2.11+ message tracing) reports it did with the message,
//! between the PRODUCER span and the projection's link to it.

use opentelemetry_proto::tonic::trace::v1::Span;
use shared::proto::bank::v1 as pb;
use testkit::otlp::{OtlpReceiver, string_attribute};

use crate::{
    provenance::in_trace,
    telemetry::{Exporting, QUERY_TRACE, TRACE, find, hex},
};

fn event_time(span: &Span, name: &str) -> u64 {
    span.events.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no {name} event")).time_unix_nano
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_deposits_trace_shows_the_broker_storing_it_between_the_producer_and_the_projection() {
    // Given a write-service that asks the broker to trace every sampled append.
    let receiver = OtlpReceiver::start().await;
    let mut system = Exporting::start(&receiver, &[("BROKER_TRACE_RATIO", "1")]).await;

    // When an account is opened and a deposit comes in the client's sampled
    // trace, and another in an unsampled one.
    let open = pb::OpenAccountRequest { account_id: "hop".into(), owner: "Ada".into(), command_id: String::new() };
    system.commands.open_account(open).await.unwrap();
    let mut last = 0;
    for (trace, flags) in [(TRACE, "01"), (QUERY_TRACE, "00")] {
        let deposit = pb::DepositFundsRequest {
            account_id: "hop".into(),
            amount: 5,
            command_id: String::new(),
            expected_version: None,
        };
        last = system.commands.deposit_funds(in_trace(deposit, trace, flags)).await.unwrap().into_inner().position;
    }
    system.projected(last).await;
    system.stop().await;

    // Then under the deposit's PRODUCER span is the server's report: the
    // message arrived, then JetStream stored it, within the append.
    let spans = receiver.spans();
    let producer = find(&spans, "write-service", "publish test.account.*", TRACE);
    let hops: Vec<&Span> = spans.iter().map(|s| &s.span).filter(|s| s.name.starts_with("nats.server ")).collect();
    let hop =
        hops.iter().find(|s| s.parent_span_id == producer.span_id).expect("a broker span under the PRODUCER span");
    assert_eq!(hex(&hop.trace_id), TRACE);
    assert_eq!(string_attribute(&hop.attributes, "nats.server.version").as_deref(), Some("2.15.1"));
    let (arrived, stored) = (event_time(hop, "ingress"), event_time(hop, "jetstream.stored"));
    let stored_event = hop.events.iter().find(|e| e.name == "jetstream.stored").unwrap();
    assert_eq!(string_attribute(&stored_event.attributes, "nats.jetstream.stream").as_deref(), Some("TEST_EVENTS"));
    assert!(producer.start_time_unix_nano <= arrived, "the server got it after the publish began");
    assert!(arrived <= stored && stored <= producer.end_time_unix_nano, "stored before JetStream acked");
    assert_eq!((hop.start_time_unix_nano, hop.end_time_unix_nano), (arrived, stored));

    // And the projection, linked to the same PRODUCER span, began after the
    // broker stored the event.
    let projection = spans
        .iter()
        .map(|s| &s.span)
        .find(|s| s.name == "projection.account_summary" && s.links.iter().any(|l| l.span_id == producer.span_id))
        .expect("a projection span linked to the PRODUCER span");
    assert!(projection.start_time_unix_nano >= stored, "projected before it was stored?");

    // And nothing else asked the broker: not the unsampled deposit, and
    // the opening (in a trace of its own) once.
    assert_eq!(hops.len(), 2, "{:?}", hops.iter().map(|s| hex(&s.trace_id)).collect::<Vec<_>>());
    assert!(!hops.iter().any(|s| hex(&s.trace_id) == QUERY_TRACE));
}
