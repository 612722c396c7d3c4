//! Provenance and freshness of answers (docs/telemetry.md, "How fresh is
//! an answer"): a reply says which event it reflects, when that happened
//! and when it was projected; its query span links to the projection span
//! that wrote the row, which links to the command's PRODUCER span. Against
//! a real OTLP/gRPC receiver, the three binaries, NATS and SQLite.

use std::time::SystemTime;

use opentelemetry_proto::tonic::{common::v1::any_value::Value, trace::v1::Span};
use prost_types::Timestamp;
use shared::proto::bank::v1 as pb;
use testkit::otlp::{OtlpReceiver, attribute};

use crate::telemetry::{Exporting, QUERY_TRACE, TRACE, find, hex, in_trace};

fn micros(timestamp: Option<&Timestamp>) -> i64 {
    let timestamp = timestamp.expect("a timestamp");
    timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos) / 1_000
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// The span `link` points to.
fn linked<'a>(spans: &'a [testkit::otlp::ReceivedSpan], link: &[u8]) -> &'a Span {
    spans.iter().map(|s| &s.span).find(|s| s.span_id == link).expect("the linked span was exported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_says_how_fresh_it_is_and_its_trace_leads_back_to_the_command() {
    // Given the three services exporting to one OTLP receiver.
    let receiver = OtlpReceiver::start().await;
    let system = Exporting::start(&receiver, &[]).await;
    let (mut commands, mut queries) = (system.commands.clone(), system.queries.clone());

    // When an account is opened, then a deposit comes in the client's trace,
    // and the client reads its write back.
    let open = pb::OpenAccountRequest { account_id: "fresh".into(), owner: "Ada".into(), command_id: String::new() };
    commands.open_account(open).await.unwrap();
    let before_deposit = now_us();
    let deposit = pb::DepositFundsRequest {
        account_id: "fresh".into(),
        amount: 100,
        command_id: String::new(),
        expected_version: None,
    };
    let deposited = commands.deposit_funds(in_trace(deposit, TRACE, "01")).await.unwrap().into_inner();
    let get = pb::GetAccountRequest { account_id: "fresh".into(), min_position: deposited.position };
    let account = queries.get_account(in_trace(get, QUERY_TRACE, "01")).await.unwrap().into_inner();
    let answered_at = now_us();
    let history = queries
        .get_account_history(pb::GetAccountHistoryRequest { account_id: "fresh".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();

    // Then the reply names the event it reflects, when it happened and when
    // it was projected, and how far the read model was.
    assert_eq!(account.position, deposited.position);
    let (happened, projected) = (micros(account.updated_at.as_ref()), micros(account.projected_at.as_ref()));
    assert!(before_deposit <= happened && happened <= projected && projected <= answered_at, "{account:?}");
    assert!(account.as_of_position >= deposited.position, "{account:?}");
    assert!(history.as_of_position >= deposited.position, "{history:?}");

    // And each history entry carries its command's trace id: the deposit's
    // is the client's trace; the opening (no trace context sent) has one of
    // its own.
    let trace_ids: Vec<&str> = history.entries.iter().map(|entry| entry.trace_id.as_str()).collect();
    assert_eq!(trace_ids.len(), 2);
    assert_eq!(trace_ids[1], TRACE);
    assert!(trace_ids[0].len() == 32 && trace_ids[0] != TRACE, "{trace_ids:?}");
    assert!(history.entries.iter().all(|entry| entry.projected_at.is_some()));

    // And the whole chain can be followed: the query span links to the
    // projection span that wrote the row, which links to the deposit's
    // PRODUCER span, in the client's trace.
    system.stop().await;
    let spans = receiver.spans();
    let query = find(&spans, "read-service", "query.GetAccount", QUERY_TRACE);
    assert_eq!(query.links.len(), 1, "{:?}", query.links);
    assert_eq!(
        attribute(&query.attributes, "cqrs.query.as_of_position"),
        Some(Value::IntValue(account.as_of_position as i64))
    );
    assert!(
        matches!(attribute(&query.attributes, "cqrs.query.answer_age_ms"), Some(Value::DoubleValue(age)) if age >= 0.0)
    );
    let projection = linked(&spans, &query.links[0].span_id);
    assert_eq!(projection.name, "projection.account_summary");
    assert_eq!(hex(&projection.trace_id), hex(&query.links[0].trace_id));
    assert_eq!(
        attribute(&projection.attributes, "cqrs.event.position"),
        Some(Value::IntValue(deposited.position as i64))
    );
    let producer = find(&spans, "write-service", "publish test.account.*", TRACE);
    assert_eq!(projection.links.len(), 1);
    assert_eq!(projection.links[0].span_id, producer.span_id);
    assert_eq!(hex(&projection.links[0].trace_id), TRACE);

    // And the history query links to the history projection's spans, one
    // per entry it returned.
    let history_query =
        spans.iter().map(|s| &s.span).find(|s| s.name == "query.GetAccountHistory").expect("a history query span");
    assert_eq!(history_query.links.len(), 2);
    for link in &history_query.links {
        assert_eq!(linked(&spans, &link.span_id).name, "projection.account_history");
    }

    // And the age of answers is a metric per query type.
    let ages: Vec<_> = receiver
        .metrics()
        .into_iter()
        .filter(|m| m.service == "read-service" && m.metric.name == "cqrs.query.answer_age")
        .collect();
    assert!(!ages.is_empty(), "no cqrs.query.answer_age exported");
    let keys: Vec<String> =
        ages.iter().flat_map(|m| crate::telemetry::attribute_keys(m.metric.data.as_ref())).collect();
    assert!(keys.iter().any(|key| key == "query.type"), "{keys:?}");
}
