//! Events the project did not write: set aside with a reason, counted,
//! never blocking the events behind them.

use async_nats::HeaderMap;
use prost::Message;
use shared::proto::bank::v1 as pb;

use crate::{both_stores, helpers::*};

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(*name, *value);
    }
    headers
}

both_stores!(poison_events_are_set_aside_and_the_rest_applied);
async fn poison_events_are_set_aside_and_the_rest_applied(store: Store) {
    let stack = Stack::start(store).await;
    stack.open("acc", "Owner").await;
    let jetstream = stack.jetstream().await;
    let envelope = |id: &'static str, event_type: &'static str, version: &'static str| {
        headers(&[
            ("ce-type", event_type),
            ("ce-subject", id),
            ("ce-aggregateversion", version),
            ("ce-time", "2026-11-25T10:00:00Z"),
        ])
    };
    let deposit = |id: &str| pb::FundsDeposited { account_id: id.into(), amount: 5 }.encode_to_vec().into();
    let poison = [
        ("test.account.garbage", envelope("garbage", "bank.v1.FundsDeposited", "2"), vec![0xff, 0xfe, 0x00].into()),
        ("test.account.mystery", envelope("mystery", "bank.v1.AccountFrozen", "1"), deposit("mystery")),
        ("test.account.bare", HeaderMap::new(), deposit("bare")),
        ("test.account.ghost", envelope("ghost", "bank.v1.FundsDeposited", "2"), deposit("ghost")),
    ];
    for (subject, headers, payload) in poison {
        jetstream.publish_with_headers(subject, headers, payload).await.unwrap().await.unwrap();
    }
    let after = stack.deposit("acc", 42).await;

    // The event behind the poison is applied...
    assert_eq!(stack.account("acc", after.position).await.balance, 42);
    // ...and every poison event is set aside with its reason.
    let letters = stack.read_store().await.dead_letters().await.unwrap();
    let reasons: Vec<(&str, &str)> = letters.iter().map(|l| (l.subject.as_str(), l.reason.as_str())).collect();
    assert_eq!(letters.len(), 4, "{reasons:?}");
    assert!(reasons[0].0 == "test.account.garbage" && reasons[0].1.contains("not a valid bank.v1.FundsDeposited"));
    assert!(reasons[1].1.contains("unknown event type \"bank.v1.AccountFrozen\""), "{reasons:?}");
    assert!(reasons[2].1.contains("missing"), "{reasons:?}");
    assert!(reasons[3].1.contains("never opened"), "{reasons:?}");
    assert_eq!(letters[0].payload, vec![0xff, 0xfe, 0x00]);
    assert!(letters[3].headers.contains("ce-subject: ghost"));

    // The poison left no trace in the read model.
    let request = pb::GetAccountRequest { account_id: "ghost".into(), min_position: 0 };
    assert_eq!(stack.queries.clone().get_account(request).await.unwrap_err().code(), tonic::Code::NotFound);
}
