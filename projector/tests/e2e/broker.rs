//! The broker hop inside the trace (docs/telemetry.md, "The broker hop"):
//! with BROKER_TRACE_RATIO, a sampled append's trace holds what the pinned
//! nats-server (2.11+ message tracing) reports it did with the message,
//! between the PRODUCER span and the projection's link to it.

use opentelemetry_proto::tonic::trace::v1::Span;
use shared::proto::bank::v1 as pb;
use testkit::otlp::{OtlpReceiver, string_attribute};

use crate::telemetry::{Exporting, QUERY_TRACE, TRACE, find, hex, in_trace};

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
    let last = system.deposits_in_traces("hop", &[(TRACE, "01"), (QUERY_TRACE, "00")]).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_user_that_may_not_receive_the_reports_turns_broker_tracing_off_and_appends_go_on() {
    // Given a NATS user that may append events but not publish to the
    // report subjects (a server refuses a message with a Nats-Trace-Dest
    // its publisher may not publish to: the append itself).
    let config = r#"authorization { users: [ { user: w, password: w, permissions: {
        publish: { allow: ["test.account.*", "$JS.API.>", "$JS.FC.>"] },
        subscribe: { allow: ["_INBOX.>", "test.trace.*"] } } } ] }"#;
    let nats = testkit::NatsServer::start_with_config(config).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let env = [
        ("NATS_URL", nats.url()),
        ("NATS_USER", "w".to_owned()),
        ("NATS_PASSWORD", "w".to_owned()),
        ("BROKER_TRACE_RATIO", "1".to_owned()),
        ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9".to_owned()),
    ];
    let write = crate::telemetry::service_command("write-service", addr, &env)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::helpers::wait_for_health(addr, tonic_health::pb::health_check_response::ServingStatus::Serving).await;

    // When commands come in sampled traces, they are appended.
    let mut commands =
        pb::account_command_service_client::AccountCommandServiceClient::new(crate::helpers::channel(addr));
    let open = pb::OpenAccountRequest { account_id: "off".into(), owner: "Ada".into(), command_id: String::new() };
    commands.open_account(in_trace(open, TRACE, "01")).await.unwrap();
    let deposit = pb::DepositFundsRequest {
        account_id: "off".into(),
        amount: 5,
        command_id: String::new(),
        expected_version: None,
    };
    assert_eq!(commands.deposit_funds(in_trace(deposit, TRACE, "01")).await.unwrap().into_inner().position, 2);

    // And the operator is told why there is no broker hop.
    let pid = write.id().unwrap().to_string();
    tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    let output = write.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("broker tracing is off"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_trace_shows_the_message_forwarded_to_the_stream_leader_and_stored_there() {
    // Given an R3 stream on three servers, and a write-service connected to
    // n0, which does not lead the stream.
    let cluster = testkit::cluster::NatsCluster::start(3).await;
    let receiver = OtlpReceiver::start().await;
    let n0 = cluster.url().split(',').next().unwrap().to_owned();
    let env = [
        ("NATS_URL", n0.clone()),
        ("EVENT_STREAM_REPLICAS", "3".to_owned()),
        ("BROKER_TRACE_RATIO", "1".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let write = crate::telemetry::spawn("write-service", addr, &env);
    crate::helpers::wait_for_health(addr, tonic_health::pb::health_check_response::ServingStatus::Serving).await;
    let admin = async_nats::connect(n0).await.unwrap();
    let leader = loop {
        let leader = cluster.stream_leader(crate::helpers::STREAM).await.expect("a stream leader");
        if leader != "n0" {
            break leader;
        }
        let stepdown = format!("$JS.API.STREAM.LEADER.STEPDOWN.{}", crate::helpers::STREAM);
        let _ = admin.request(stepdown, "".into()).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };

    // When a deposit comes in the client's sampled trace.
    let mut commands =
        pb::account_command_service_client::AccountCommandServiceClient::new(crate::helpers::channel(addr));
    let open = pb::OpenAccountRequest { account_id: "far".into(), owner: "Ada".into(), command_id: String::new() };
    commands.open_account(open).await.unwrap();
    let deposit = pb::DepositFundsRequest {
        account_id: "far".into(),
        amount: 5,
        command_id: String::new(),
        expected_version: None,
    };
    commands.deposit_funds(in_trace(deposit, TRACE, "01")).await.unwrap();
    crate::telemetry::stop(write).await;

    // Then under its PRODUCER span, n0 received it and forwarded it over a
    // route; the leader received it from n0 (hop 1) and stored it; all
    // before JetStream acknowledged the append.
    let spans = receiver.spans();
    let producer = find(&spans, "write-service", "publish test.account.*", TRACE);
    let hop = |server: &str| {
        spans
            .iter()
            .map(|s| &s.span)
            .find(|s| s.parent_span_id == producer.span_id && s.name == format!("nats.server {server}"))
            .unwrap_or_else(|| panic!("no report from {server}"))
    };
    let (entry, stored_at) = (hop("n0"), hop(&leader));
    let forwarded = entry.events.iter().find(|e| e.name == "egress").expect("n0 forwarded it");
    assert_eq!(string_attribute(&forwarded.attributes, "nats.egress.kind").as_deref(), Some("route"));
    assert_eq!(string_attribute(&stored_at.attributes, "nats.trace.hop").as_deref(), Some("1"));
    let stored = event_time(stored_at, "jetstream.stored");
    assert!(producer.start_time_unix_nano <= event_time(entry, "ingress"));
    assert!(forwarded.time_unix_nano <= event_time(stored_at, "ingress"), "forwarded before the leader got it");
    assert!(event_time(stored_at, "ingress") <= stored && stored <= producer.end_time_unix_nano);
}
