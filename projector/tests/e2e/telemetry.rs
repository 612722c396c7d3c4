//! The telemetry contract, against a real OTLP/gRPC receiver: the three
//! binaries export to it, and this test reads back the trace of one deposit
//! across the broker and every metric with its unit and attribute keys.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use opentelemetry_proto::tonic::{
    common::v1::any_value::Value,
    metrics::v1::{NumberDataPoint, metric::Data},
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};
use shared::proto::bank::v1 as pb;
use testkit::{
    NatsServer, free_port,
    otlp::{OtlpReceiver, ReceivedSpan, attribute, string_attribute},
};
use tokio::process::{Child, Command};
use tonic::{Code, IntoRequest, metadata::MetadataValue};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::*;

pub(crate) const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub(crate) const CLIENT_SPAN: &str = "00f067aa0ba902b7";
pub(crate) const QUERY_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// A sibling binary of the projector's in the same target folder (built by
/// `cargo test --workspace`).
pub(crate) fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_projector")).with_file_name(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace` (or the test script) first", path.display());
    path
}

/// The service binary `name` on `addr`, on this suite's stream, with `env`
/// on top; killed when dropped.
pub(crate) fn service_command(name: &str, addr: SocketAddr, env: &[(&str, String)]) -> Command {
    let mut command = Command::new(binary(name));
    command
        .env("LISTEN_ADDR", addr.to_string())
        .env("EVENT_STREAM", STREAM)
        .env("EVENT_SUBJECT_PREFIX", PREFIX)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

pub(crate) fn spawn(name: &str, addr: SocketAddr, env: &[(&str, String)]) -> Child {
    service_command(name, addr, env).spawn().unwrap()
}

pub(crate) async fn stop(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("exits on SIGTERM").unwrap();
    assert!(status.success(), "{status:?}");
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    attribute(&span.attributes, key)
}

fn text(span: &Span, key: &str) -> String {
    string_attribute(&span.attributes, key).unwrap_or_else(|| panic!("span {} has no string {key}", span.name))
}

pub(crate) fn find<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str, trace: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.service == service && s.span.name == name && hex(&s.span.trace_id) == trace)
        .map(|s| &s.span)
        .unwrap_or_else(|| panic!("no span {name} from {service} in trace {trace}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_the_broker_and_every_metric_reach_the_collector() {
    let receiver = OtlpReceiver::start().await;
    let system = Exporting::start(&receiver, &[]).await;
    let (mut commands, mut queries) = (system.commands.clone(), system.queries.clone());
    let open = pb::OpenAccountRequest { account_id: "traced".into(), owner: "Ada".into(), command_id: String::new() };
    commands.open_account(open).await.unwrap();
    let deposit = pb::DepositFundsRequest {
        account_id: "traced".into(),
        amount: 100,
        command_id: String::new(),
        expected_version: None,
    };
    let deposited = commands.deposit_funds(in_trace(deposit, TRACE, "01")).await.unwrap().into_inner();
    // A refused command (an error by business rule, not by the server).
    let overdraw = pb::WithdrawFundsRequest {
        account_id: "traced".into(),
        amount: 1_000,
        command_id: String::new(),
        expected_version: None,
    };
    assert_eq!(commands.withdraw_funds(overdraw).await.unwrap_err().code(), Code::FailedPrecondition);

    let get = pb::GetAccountRequest { account_id: "traced".into(), min_position: deposited.position };
    assert_eq!(queries.get_account(in_trace(get, QUERY_TRACE, "01")).await.unwrap().into_inner().balance, 100);
    let missing = pb::GetAccountRequest { account_id: "missing".into(), min_position: 0 };
    assert_eq!(queries.get_account(missing).await.unwrap_err().code(), Code::NotFound);
    // A malformed trace context is ignored: the call succeeds in a new trace.
    let mut garbled = pb::ListAccountsRequest::default().into_request();
    garbled.metadata_mut().insert("traceparent", MetadataValue::from_static("00-xyz-not-a-context-01"));
    garbled.metadata_mut().insert("baggage", MetadataValue::from_static("==;;"));
    assert_eq!(queries.list_accounts(garbled).await.unwrap().into_inner().accounts.len(), 1);

    // SIGTERM flushes traces and metrics before exit.
    system.stop().await;
    let spans = receiver.spans();

    // write-service: SERVER -> command.DepositFunds -> PRODUCER, in the client's trace.
    let server = find(&spans, "write-service", "bank.v1.AccountCommandService/DepositFunds", TRACE);
    assert_eq!(server.kind(), SpanKind::Server);
    assert_eq!(hex(&server.parent_span_id), CLIENT_SPAN);
    assert_eq!(text(server, "rpc.system.name"), "grpc");
    assert_eq!(text(server, "rpc.method"), "bank.v1.AccountCommandService/DepositFunds");
    assert_eq!(text(server, "rpc.response.status_code"), "OK");
    assert_eq!(text(server, "cqrs.side"), "write");
    let command = find(&spans, "write-service", "command.DepositFunds", TRACE);
    assert_eq!(command.kind(), SpanKind::Internal);
    assert_eq!(command.parent_span_id, server.span_id);
    assert_eq!(text(command, "cqrs.side"), "write");
    assert_eq!(text(command, "cqrs.command.type"), "DepositFunds");
    assert_eq!(text(command, "cqrs.aggregate.id"), "traced");
    assert_eq!(attr(command, "cqrs.events.count"), Some(Value::IntValue(1)));
    let produced = command.events.iter().find(|e| e.name == "domain_event_produced").expect("span event");
    assert_eq!(string_attribute(&produced.attributes, "event.type").as_deref(), Some("bank.v1.FundsDeposited"));
    let producer = find(&spans, "write-service", "publish test.account.*", TRACE);
    assert_eq!(producer.kind(), SpanKind::Producer);
    assert_eq!(producer.parent_span_id, command.span_id);
    assert_eq!(text(producer, "messaging.system"), "nats");
    assert_eq!(text(producer, "messaging.destination.name"), "test.account.traced");
    assert_eq!(text(producer, "messaging.operation.type"), "send");
    assert!(attr(producer, "messaging.message.id").is_some());

    // A business-rule refusal: the command span is an error, the SERVER span is not.
    let refused = spans.iter().find(|s| s.span.name == "command.WithdrawFunds").expect("withdraw span");
    assert_eq!(refused.span.status.as_ref().map(|s| s.code()), Some(StatusCode::Error));
    assert!(refused.span.events.iter().any(|e| e.name == "exception"));
    let refused_server = spans.iter().find(|s| s.span.span_id == refused.span.parent_span_id).expect("its SERVER span");
    assert_ne!(refused_server.span.status.as_ref().map(|s| s.code()), Some(StatusCode::Error));
    assert_eq!(text(&refused_server.span, "rpc.response.status_code"), "FAILED_PRECONDITION");

    // projector: one CONSUMER span per projection, in its own trace, linked to the PRODUCER span.
    for name in ["projection.account_summary", "projection.account_history"] {
        let projection = spans
            .iter()
            .map(|s| &s.span)
            .find(|s| s.name == name && s.links.iter().any(|l| l.span_id == producer.span_id))
            .unwrap_or_else(|| panic!("no {name} span linked to the producer"));
        assert_eq!(projection.kind(), SpanKind::Consumer);
        assert_ne!(hex(&projection.trace_id), TRACE, "a link, not a parent");
        assert!(projection.parent_span_id.is_empty());
        assert_eq!(hex(&projection.links[0].trace_id), TRACE);
        assert_eq!(text(projection, "cqrs.side"), "projection");
        assert_eq!(text(projection, "cqrs.event.type"), "bank.v1.FundsDeposited");
        assert_eq!(text(projection, "cqrs.event.aggregate_id"), "traced");
        assert_eq!(text(projection, "cqrs.projection.status"), "applied");
        assert_eq!(text(projection, "messaging.operation.name"), "process");
        assert_eq!(text(projection, "messaging.consumer.group.name"), "projector");
        assert_eq!(text(projection, "messaging.destination.template"), "test.account.*");
        assert_eq!(attr(projection, "cqrs.event.position"), Some(Value::IntValue(deposited.position as i64)));
        assert!(matches!(attr(projection, "cqrs.projection.lag_ms"), Some(Value::DoubleValue(_))));
    }

    // Broker tracing is off by default: no server was asked for a report.
    assert!(!spans.iter().any(|s| s.span.name.starts_with("nats.server ")));

    // read-service: SERVER -> query.GetAccount, in the client's trace.
    let read_server = find(&spans, "read-service", "bank.v1.AccountQueryService/GetAccount", QUERY_TRACE);
    assert_eq!(text(read_server, "cqrs.side"), "read");
    let query = find(&spans, "read-service", "query.GetAccount", QUERY_TRACE);
    assert_eq!(query.parent_span_id, read_server.span_id);
    assert_eq!(text(query, "cqrs.query.type"), "GetAccount");
    assert_eq!(attr(query, "cqrs.query.result_count"), Some(Value::IntValue(1)));
    assert!(matches!(attr(query, "cqrs.query.consistency_wait_ms"), Some(Value::DoubleValue(_))));

    let list = spans.iter().find(|s| s.span.name == "bank.v1.AccountQueryService/ListAccounts").expect("list span");
    assert!(list.span.parent_span_id.is_empty(), "a new trace, not a child of garbage");
    assert_eq!(list.span.trace_id.len(), 16);

    // Resources name the services.
    for service in ["write-service", "projector", "read-service"] {
        let resource = &spans.iter().find(|s| s.service == service).expect("spans from every service").resource;
        assert!(string_attribute(&resource.attributes, "service.version").is_some());
        assert!(string_attribute(&resource.attributes, "service.instance.id").is_some());
    }

    // Metrics: name, unit and the attribute keys of their data points.
    let metrics = receiver.metrics();
    let check = |service: &str, name: &str, unit: &str, keys: &[&str]| {
        let found: Vec<_> = metrics.iter().filter(|m| m.service == service && m.metric.name == name).collect();
        assert!(!found.is_empty(), "{service} exported no {name}");
        assert_eq!(found[0].metric.unit, unit, "{name}'s unit");
        let seen: BTreeSet<String> = found.iter().flat_map(|m| attribute_keys(m.metric.data.as_ref())).collect();
        for key in keys {
            assert!(seen.contains(*key), "{name} lacks attribute {key}: {seen:?}");
        }
    };
    check("write-service", "cqrs.command.duration", "", &["cqrs.side", "command.type", "command.status", "error.type"]);
    check("write-service", "cqrs.command", "", &["cqrs.side", "command.type", "command.status", "error.type"]);
    check("write-service", "cqrs.events.produced", "", &["cqrs.side", "command.type"]);
    check(
        "write-service",
        "rpc.server.call.duration",
        "s",
        &["rpc.system.name", "rpc.method", "rpc.response.status_code", "cqrs.side"],
    );
    check("read-service", "cqrs.query.duration", "", &["cqrs.side", "query.type", "query.status", "error.type"]);
    check("read-service", "cqrs.query", "", &["cqrs.side", "query.type", "query.status"]);
    check("read-service", "cqrs.query.result_size", "", &["cqrs.side", "query.type"]);
    check("read-service", "cqrs.query.consistency_wait", "", &["cqrs.side", "query.type"]);
    check("read-service", "rpc.server.call.duration", "s", &["rpc.method", "rpc.response.status_code", "cqrs.side"]);
    check("projector", "cqrs.projection.lag", "", &["cqrs.side", "projection.name", "event.type"]);
    check("projector", "cqrs.projection.events", "", &["cqrs.side", "projection.name", "outcome"]);
    check("projector", "cqrs.projection.pending", "", &["cqrs.side"]);
    check("projector", "cqrs.projection.checkpoint", "", &["cqrs.side", "projection.name"]);
    check("projector", "cqrs.projection.dead_letters", "", &["cqrs.side"]);

    // And what deploy/ queries is what they export.
    let exported: Vec<_> = metrics.iter().map(|m| &m.metric).collect();
    crate::promql::assert_shipped_queries_select_exported_metrics(&exported);
}

pub(crate) fn attribute_keys(data: Option<&Data>) -> Vec<String> {
    let number = |points: &[NumberDataPoint]| -> Vec<String> {
        points.iter().flat_map(|p| p.attributes.iter().map(|kv| kv.key.clone())).collect()
    };
    match data {
        Some(Data::Histogram(histogram)) => {
            histogram.data_points.iter().flat_map(|p| p.attributes.iter().map(|kv| kv.key.clone())).collect()
        }
        Some(Data::Sum(sum)) => number(&sum.data_points),
        Some(Data::Gauge(gauge)) => number(&gauge.data_points),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_client_cancels_is_counted_with_its_status_and_its_spans_end() {
    // Given a read-service exporting to a collector, and a query that waits
    // for a position the read model will not reach.
    let receiver = OtlpReceiver::start().await;
    let store = Store::sqlite();
    let env = vec![
        ("READ_STORE_URL", store.url()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    // The schema is the projector's to create; no projector runs here.
    read_model::ReadStore::connect(&store.url(), 1).await.unwrap().close().await;
    let read_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let read = spawn("read-service", read_addr, &env);
    wait_for_health(read_addr, ServingStatus::Serving).await;
    let mut queries = pb::account_query_service_client::AccountQueryServiceClient::new(channel(read_addr));
    let mut get = pb::GetAccountRequest { account_id: "later".into(), min_position: 1_000 }.into_request();
    get.metadata_mut()
        .insert("traceparent", MetadataValue::try_from(format!("00-{QUERY_TRACE}-{CLIENT_SPAN}-01").as_str()).unwrap());

    // When the client gives up after 300 ms (its future is dropped: HTTP/2
    // RST_STREAM), and makes one call that completes.
    assert!(tokio::time::timeout(Duration::from_millis(300), queries.get_account(get)).await.is_err());
    let missing = pb::GetAccountRequest { account_id: "missing".into(), min_position: 0 };
    assert_eq!(queries.get_account(missing).await.unwrap_err().code(), Code::NotFound);
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop(read).await;

    // Then the cancelled call has its SERVER and query spans, ended with
    // CANCELLED, and both calls are counted with their status.
    let spans = receiver.spans();
    let server = find(&spans, "read-service", "bank.v1.AccountQueryService/GetAccount", QUERY_TRACE);
    assert_eq!(text(server, "rpc.response.status_code"), "CANCELLED");
    let query = find(&spans, "read-service", "query.GetAccount", QUERY_TRACE);
    assert_eq!(text(query, "error.type"), "CANCELLED");
    assert_eq!(query.status.as_ref().map(|s| s.code()), Some(StatusCode::Error));
    let metrics = receiver.metrics();
    let statuses = |name: &str, key: &str| -> BTreeSet<String> {
        metrics
            .iter()
            .filter(|m| m.metric.name == name)
            .flat_map(|m| data_point_values(m.metric.data.as_ref(), key))
            .collect()
    };
    let calls = statuses("rpc.server.call.duration", "rpc.response.status_code");
    assert!(calls.contains("CANCELLED") && calls.contains("NOT_FOUND"), "rpc.server.call.duration: {calls:?}");
    let queries_counted = statuses("cqrs.query", "error.type");
    assert!(queries_counted.contains("CANCELLED") && queries_counted.contains("NOT_FOUND"), "{queries_counted:?}");
    let durations = statuses("cqrs.query.duration", "error.type");
    assert!(durations.contains("CANCELLED"), "cqrs.query.duration: {durations:?}");
}

/// A request in the client's trace `trace`, sampled if `flags` is `01`.
pub(crate) fn in_trace<T>(message: T, trace: &str, flags: &str) -> tonic::Request<T> {
    let mut request = message.into_request();
    let traceparent = format!("00-{trace}-{CLIENT_SPAN}-{flags}");
    request.metadata_mut().insert("traceparent", MetadataValue::try_from(traceparent.as_str()).unwrap());
    request
}

/// The three services, exporting to `receiver` (spans every 100 ms,
/// metrics every 500 ms), on a fresh NATS and SQLite store; `extra` on top
/// of their environment.
pub(crate) struct Exporting {
    nats: NatsServer,
    store: Store,
    write: Child,
    projector: Child,
    read: Child,
    pub(crate) commands: pb::account_command_service_client::AccountCommandServiceClient<tonic::transport::Channel>,
    pub(crate) queries: pb::account_query_service_client::AccountQueryServiceClient<tonic::transport::Channel>,
}

impl Exporting {
    pub(crate) async fn start(receiver: &OtlpReceiver, extra: &[(&'static str, &str)]) -> Self {
        let nats = NatsServer::start().await;
        let store = Store::sqlite();
        let mut env = vec![
            ("NATS_URL", nats.url()),
            ("READ_STORE_URL", store.url()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ];
        env.extend(extra.iter().map(|(name, value)| (*name, (*value).to_owned())));
        let [write_addr, projector_addr, read_addr] = [0; 3].map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let write = spawn("write-service", write_addr, &env);
        wait_for_health(write_addr, ServingStatus::Serving).await;
        let projector = spawn("projector", projector_addr, &env);
        let read = spawn("read-service", read_addr, &env);
        wait_for_health(projector_addr, ServingStatus::Serving).await;
        wait_for_health(read_addr, ServingStatus::Serving).await;
        let commands = pb::account_command_service_client::AccountCommandServiceClient::new(channel(write_addr));
        let queries = pb::account_query_service_client::AccountQueryServiceClient::new(channel(read_addr));
        Self { nats, store, write, projector, read, commands, queries }
    }

    /// Opens `account_id`, then deposits 5 in each of `traces` (trace id,
    /// flags); returns the last deposit's position.
    pub(crate) async fn deposits_in_traces(&mut self, account_id: &str, traces: &[(&str, &str)]) -> u64 {
        let open =
            pb::OpenAccountRequest { account_id: account_id.into(), owner: "Ada".into(), command_id: String::new() };
        self.commands.open_account(open).await.unwrap();
        let mut last = 0;
        for (trace, flags) in traces {
            let deposit = pb::DepositFundsRequest { account_id: account_id.into(), amount: 5, ..Default::default() };
            last = self.commands.deposit_funds(in_trace(deposit, trace, flags)).await.unwrap().into_inner().position;
        }
        last
    }

    /// Waits until both projections have applied `position`.
    pub(crate) async fn projected(&self, position: u64) {
        let read_model = read_model::ReadStore::connect(&self.store.url(), 1).await.unwrap();
        testkit::eventually(Duration::from_secs(15), &format!("position {position} projected"), || {
            let read_model = read_model.clone();
            async move {
                read_model
                    .progress()
                    .await
                    .is_ok_and(|p| read_model::Projection::ALL.iter().all(|pr| p.of_all(*pr) >= position))
            }
        })
        .await;
    }

    /// SIGTERM to all: they flush their telemetry on the way out.
    pub(crate) async fn stop(self) {
        tokio::join!(stop(self.write), stop(self.projector), stop(self.read));
        drop(self.nats);
    }
}

/// The string values attribute `key` takes in a metric's data points.
fn data_point_values(data: Option<&Data>, key: &str) -> Vec<String> {
    let value = |attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]| string_attribute(attributes, key);
    match data {
        Some(Data::Histogram(histogram)) => histogram.data_points.iter().filter_map(|p| value(&p.attributes)).collect(),
        Some(Data::Sum(sum)) => sum.data_points.iter().filter_map(|p| value(&p.attributes)).collect(),
        Some(Data::Gauge(gauge)) => gauge.data_points.iter().filter_map(|p| value(&p.attributes)).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_reports_its_progress_and_neither_lag_nor_spans() {
    // Given a log of 300 events (created as the write-service creates it).
    let receiver = OtlpReceiver::start().await;
    let nats = NatsServer::start().await;
    let store = Store::sqlite();
    let write_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let write = spawn("write-service", write_addr, &[("NATS_URL", nats.url()), ("OTEL_SDK_DISABLED", "true".into())]);
    wait_for_health(write_addr, ServingStatus::Serving).await;
    let names = shared::event_log::EventLogArgs { stream: STREAM.into(), subject_prefix: PREFIX.into() };
    let last = testkit::event_log::seed(&nats.url(), &names, "old-", 100, 3).await.unwrap();
    stop(write).await;

    // When the read model is rebuilt with telemetry on.
    let output = projector_command(&nats.url(), &store.url())
        .env("OTEL_SDK_DISABLED", "false")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .arg("rebuild")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // Then its progress is reported, and nothing that live traffic reports:
    // no lag (years-old events would pin it and page), no span per event.
    let metrics = receiver.metrics();
    let exported = |name: &str| metrics.iter().filter(|m| m.metric.name == name).collect::<Vec<_>>();
    assert!(exported("cqrs.projection.lag").is_empty(), "a rebuild recorded lag");
    assert!(exported("cqrs.projection.events").is_empty(), "a rebuild counted as live traffic");
    let replayed: Vec<f64> =
        exported("cqrs.projection.replayed").iter().flat_map(|m| numbers(m.metric.data.as_ref())).collect();
    assert_eq!(replayed.iter().copied().fold(0.0, f64::max), last as f64, "per projection: {replayed:?}");
    let position = exported("cqrs.projection.replay.position")
        .iter()
        .flat_map(|m| numbers(m.metric.data.as_ref()))
        .fold(0.0, f64::max);
    let target = exported("cqrs.projection.replay.target")
        .iter()
        .flat_map(|m| numbers(m.metric.data.as_ref()))
        .fold(0.0, f64::max);
    assert_eq!((position, target), (last as f64, last as f64));
    let spans = receiver.spans();
    assert!(!spans.iter().any(|s| s.span.name.starts_with("projection.")), "a rebuild traced every event");
}

/// The values of a sum's or gauge's data points.
fn numbers(data: Option<&Data>) -> Vec<f64> {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
    let points = match data {
        Some(Data::Sum(sum)) => &sum.data_points,
        Some(Data::Gauge(gauge)) => &gauge.data_points,
        _ => return Vec::new(),
    };
    points
        .iter()
        .filter_map(|point| match point.value {
            Some(Number::AsInt(n)) => Some(n as f64),
            Some(Number::AsDouble(x)) => Some(x),
            None => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_span_follows_the_sampling_decision_of_the_command_it_links_to() {
    // Given services that start no trace of their own (ratio 0): only calls
    // in a client's sampled trace are traced.
    let receiver = OtlpReceiver::start().await;
    let sampler = [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0")];
    let mut system = Exporting::start(&receiver, &sampler).await;

    // When one deposit comes in a sampled trace and one in an unsampled one.
    let last = system.deposits_in_traces("sampled", &[(TRACE, "01"), (QUERY_TRACE, "00")]).await;
    system.projected(last).await;
    system.stop().await;

    // Then the sampled command's projections are traced, linked to its
    // PRODUCER span, and nothing else is: no pair is half kept.
    let spans = receiver.spans();
    let producer = find(&spans, "write-service", "publish test.account.*", TRACE);
    let projections: Vec<&Span> = spans.iter().map(|s| &s.span).filter(|s| s.name.starts_with("projection.")).collect();
    assert_eq!(projections.len(), 2, "{:?}", projections.iter().map(|s| &s.name).collect::<Vec<_>>());
    assert!(projections.iter().all(|s| s.links.iter().any(|l| l.span_id == producer.span_id)));
    assert!(!spans.iter().any(|s| hex(&s.span.trace_id) == QUERY_TRACE), "the unsampled trace was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_projector_reports_growing_staleness_until_it_catches_up() {
    // Given the system, projecting.
    let receiver = OtlpReceiver::start().await;
    let mut system = Exporting::start(&receiver, &[]).await;
    let open = pb::OpenAccountRequest { account_id: "stalled".into(), owner: "Ada".into(), command_id: String::new() };
    let opened = system.commands.open_account(open).await.unwrap().into_inner().position;
    system.projected(opened).await;
    let staleness = || -> Vec<f64> {
        let metrics = receiver.metrics();
        let exported = metrics.iter().filter(|m| m.metric.name == "cqrs.projection.staleness");
        exported.flat_map(|m| numbers(m.metric.data.as_ref())).collect()
    };

    // When the read store stays locked by someone else while an event waits.
    let lock = StoreLock::take(&system.store).await;
    let deposit = pb::DepositFundsRequest {
        account_id: "stalled".into(),
        amount: 5,
        command_id: String::new(),
        expected_version: None,
    };
    let deposited = system.commands.deposit_funds(deposit).await.unwrap().into_inner().position;

    // Then the staleness climbs past two seconds (the lag of applied events
    // cannot: nothing is applied)...
    testkit::eventually(Duration::from_secs(15), "staleness above 2 s", || {
        let values = staleness();
        async move { values.iter().any(|ms| *ms >= 2_000.0) }
    })
    .await;
    // ...and falls back to 0 once the projector has caught up.
    lock.release().await;
    system.projected(deposited).await;
    testkit::eventually(Duration::from_secs(10), "staleness back to 0", || {
        let last = staleness().last().copied();
        async move { last == Some(0.0) }
    })
    .await;
    system.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_projector_counts_what_it_re_applies_after_a_rebuild_reset_as_replay_not_lag() {
    // Given a live projector that applied 21 events (an opening and 20
    // deposits) six seconds ago.
    let receiver = OtlpReceiver::start().await;
    let mut system = Exporting::start(&receiver, &[]).await;
    let open = pb::OpenAccountRequest { account_id: "reset".into(), owner: "Ada".into(), command_id: String::new() };
    let mut last = system.commands.open_account(open).await.unwrap().into_inner().position;
    for _ in 0..20 {
        let deposit = pb::DepositFundsRequest { account_id: "reset".into(), amount: 5, ..Default::default() };
        last = system.commands.deposit_funds(deposit).await.unwrap().into_inner().position;
    }
    system.projected(last).await;
    tokio::time::sleep(Duration::from_secs(6)).await;

    // When a rebuild resets the projections (its first step) and the next
    // event makes the live projector re-apply the history to reach it.
    let store = read_model::ReadStore::connect(&system.store.url(), 1).await.unwrap();
    for projection in read_model::Projection::ALL {
        store.reset(projection).await.unwrap();
    }
    let deposit = pb::DepositFundsRequest { account_id: "reset".into(), amount: 5, ..Default::default() };
    let next = system.commands.deposit_funds(deposit).await.unwrap().into_inner().position;
    system.projected(next).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    system.stop().await;

    // Then what it applied again is replay, per projection: no lag of six
    // seconds and more, which would page as if the projection were behind.
    let metrics = receiver.metrics();
    let exported = |name: &str| metrics.iter().filter(|m| m.metric.name == name).collect::<Vec<_>>();
    let replayed: Vec<f64> =
        exported("cqrs.projection.replayed").iter().flat_map(|m| numbers(m.metric.data.as_ref())).collect();
    assert_eq!(replayed.iter().copied().fold(0.0, f64::max), 21.0, "per projection: {replayed:?}");
    // One export per metric message, cumulative: the last one holds all.
    let exports: Vec<_> = exported("cqrs.projection.lag")
        .into_iter()
        .map(|m| match &m.metric.data {
            Some(Data::Histogram(histogram)) => histogram.data_points.clone(),
            _ => Vec::new(),
        })
        .collect();
    let recorded = exports.iter().map(|points| points.iter().map(|p| p.count).sum::<u64>()).max();
    let longest = exports.iter().flatten().filter_map(|p| p.max).fold(0.0, f64::max);
    assert_eq!(recorded, Some(2 * 22), "lag is recorded once per event applied live, per projection");
    assert!(longest < 6_000.0, "an event applied again was counted as {longest} ms of lag");
}
