//! What lands in JetStream: the stream's configuration and each event's
//! subject, headers and payload.

use async_nats::jetstream::{self, stream::DiscardPolicy};
use prost::Message;
use shared::{event_log::Envelope, events::AccountEvent, proto::bank::v1 as pb};
use std::time::Duration;
use testkit::NatsServer;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tonic::{Code, IntoRequest, metadata::MetadataValue};

use crate::helpers::*;

#[tokio::test]
async fn the_stream_is_created_as_an_event_log() {
    let nats = NatsServer::start().await;
    let _app = TestApp::spawn(&nats.url()).await;
    let jetstream = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut stream = jetstream.get_stream(STREAM).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, ["test.account.*"]);
    assert_eq!(config.storage, jetstream::stream::StorageType::File);
    assert_eq!((config.max_messages, config.max_bytes, config.max_messages_per_subject), (-1, -1, -1));
    assert_eq!(config.max_age, Duration::ZERO);
    assert_eq!(config.discard, DiscardPolicy::New);
    assert!(config.deny_delete && config.deny_purge && config.allow_direct);
    assert!(!config.allow_rollup);
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
    assert_eq!(config.num_replicas, 1);

    // JetStream itself refuses to delete an event.
    assert!(stream.delete_message(1).await.is_err());
}

#[tokio::test]
async fn each_event_is_a_traced_cloudevent_with_a_protobuf_payload() {
    let nats = NatsServer::start().await;
    let app = TestApp::spawn(&nats.url()).await;
    let mut client = app.client.clone();
    client.open_account(open("acc-7")).await.unwrap();

    let mut request = pb::DepositFundsRequest { command_id: "cmd-42".into(), ..deposit("acc-7", 250) }.into_request();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    request.metadata_mut().insert("traceparent", MetadataValue::from_static(traceparent));
    request.metadata_mut().insert("tracestate", MetadataValue::from_static("vendor=opaque-state"));
    request.metadata_mut().insert("baggage", MetadataValue::from_static("user.email=alice%40example.com,session=s3"));
    let reply = client.deposit_funds(request).await.unwrap().into_inner();

    let events = events(&nats.url()).await;
    assert_eq!(events.len(), 2);
    let event = &events[1];
    assert_eq!(event.sequence, reply.position);
    assert_eq!(event.subject.as_str(), "test.account.acc-7");
    let header = |name: &str| event.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(header("ce-type").as_deref(), Some("bank.v1.FundsDeposited"));
    assert_eq!(header("ce-subject").as_deref(), Some("acc-7"));
    assert_eq!(header("ce-aggregateversion").as_deref(), Some("2"));
    assert_eq!(header("ce-commandid").as_deref(), Some("cmd-42"));
    assert_eq!(header("content-type").as_deref(), Some("application/protobuf"));
    assert_eq!(header("Nats-Msg-Id").as_deref(), Some("acc-7:cmd-42"));
    assert_eq!(header("ce-id").map(|id| id.len()), Some(36), "a UUID");
    let time = OffsetDateTime::parse(&header("ce-time").unwrap(), &Rfc3339).unwrap();
    assert!((OffsetDateTime::now_utc() - time).abs() < time::Duration::minutes(1));

    // The client's trace continues in the event; the span id is the
    // write side's PRODUCER span, not the client's.
    let injected = header("traceparent").expect("traceparent header");
    let parts: Vec<&str> = injected.split('-').collect();
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parts[2], "00f067aa0ba902b7");
    // Nothing else the caller sent is kept in the (undeletable) log.
    let stored: Vec<&str> = event.headers.iter().map(|(name, _)| name.as_ref()).collect();
    assert!(!stored.iter().any(|name| ["tracestate", "baggage"].contains(name)), "stored: {stored:?}");
    let values: Vec<String> =
        event.headers.iter().flat_map(|(_, values)| values.iter().map(|v| v.to_string())).collect();
    assert!(!values.iter().any(|value| value.contains("alice") || value.contains("opaque-state")), "{values:?}");

    let payload = pb::FundsDeposited::decode(event.payload.clone()).unwrap();
    assert_eq!(payload, pb::FundsDeposited { account_id: "acc-7".into(), amount: 250 });

    // Without a client context, the event starts a new trace of its own.
    let opened = &events[0];
    let traceparent = opened.headers.get("traceparent").expect("traceparent").as_str();
    assert!(!traceparent.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored_and_never_fails_the_request() {
    let nats = NatsServer::start().await;
    let app = TestApp::spawn(&nats.url()).await;
    let mut request = open("acc").into_request();
    request.metadata_mut().insert("traceparent", MetadataValue::from_static("00-not-a-trace-context"));
    request.metadata_mut().insert("tracestate", MetadataValue::from_static("=,=garbage"));
    request.metadata_mut().insert("baggage", MetadataValue::from_static(";;;==="));
    assert_eq!(app.client.clone().open_account(request).await.unwrap().into_inner().version, 1);
    let events = events(&nats.url()).await;
    let traceparent = events[0].headers.get("traceparent").expect("a fresh trace").as_str();
    assert_eq!(traceparent.len(), 55);
}

#[tokio::test]
async fn an_account_whose_events_predate_the_balance_header_is_loaded_by_replay() {
    // Given an account written by a version that did not record the
    // balance in the envelope.
    let nats = NatsServer::start().await;
    let app = TestApp::spawn(&nats.url()).await;
    let jetstream = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let history = [
        AccountEvent::Opened { owner: "Ada".into() },
        AccountEvent::Deposited { amount: 100 },
        AccountEvent::Withdrawn { amount: 30 },
    ];
    for (version, event) in (1..).zip(&history) {
        let event_id = format!("old-{version}");
        let envelope = Envelope {
            event_id: &event_id,
            source: "write-service",
            event_type: event.type_name(),
            time: "2026-11-01T00:00:00Z",
            account_id: "old",
            version,
            balance: 0,
            command_id: None,
        };
        let mut headers = async_nats::HeaderMap::new();
        for (name, values) in envelope.headers().iter() {
            for value in values.iter().filter(|_| name.to_string() != "ce-accountbalance") {
                headers.append(name.clone(), value.clone());
            }
        }
        jetstream
            .publish_with_headers("test.account.old", headers, event.encode("old").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // When commands arrive, then they are decided on the replayed balance.
    let mut client = app.client.clone();
    assert_status(client.withdraw_funds(withdraw("old", 71)).await, Code::FailedPrecondition, "balance of 70");
    assert_eq!(client.withdraw_funds(withdraw("old", 70)).await.unwrap().into_inner().version, 4);
    // And from then on the last event carries it.
    let last = events(&nats.url()).await.pop().unwrap();
    assert_eq!(last.headers.get("ce-accountbalance").map(|v| v.as_str()), Some("0"));
}
