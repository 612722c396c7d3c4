//! Filling an event log fast: valid events, published as the write-service
//! publishes them (the shared envelope), without deciding each one. For
//! tests and benchmarks that need a log of realistic size to start from.

use std::collections::VecDeque;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use shared::{
    event_log::{Envelope, EventLogArgs},
    events::AccountEvent,
};

/// How many publishes await their ack at once.
const IN_FLIGHT: usize = 1_024;

/// Appends `events_per_account` events to each of `accounts` accounts
/// (`<account_prefix>0` …): an `AccountOpened`, then deposits of 1. The
/// stream must exist. Events go out version by version across all accounts, so the log
/// interleaves accounts as a live one does. Returns the last position.
pub async fn seed(
    nats_url: &str,
    names: &EventLogArgs,
    account_prefix: &str,
    accounts: usize,
    events_per_account: u64,
) -> Result<u64, async_nats::Error> {
    let jetstream = jetstream::new(async_nats::connect(nats_url).await?);
    let time = "2026-11-30T00:00:00Z";
    let mut acks: VecDeque<PublishAckFuture> = VecDeque::with_capacity(IN_FLIGHT);
    let mut last = 0;
    for version in 1..=events_per_account {
        let event = if version == 1 {
            AccountEvent::Opened { owner: "Seed".into() }
        } else {
            AccountEvent::Deposited { amount: 1 }
        };
        for account in 0..accounts {
            let account_id = format!("{account_prefix}{account}");
            let event_id = format!("{account_id}-{version}");
            let envelope = Envelope {
                event_id: &event_id,
                source: "testkit",
                event_type: event.type_name(),
                time,
                account_id: &account_id,
                version,
                // One deposit of 1 per version after the opening.
                balance: i64::try_from(version - 1).unwrap_or(i64::MAX),
                command_id: None,
            };
            let message = PublishMessage::build()
                .payload(event.encode(&account_id).into())
                .headers(envelope.headers())
                .message_id(envelope.message_id());
            if acks.len() == IN_FLIGHT
                && let Some(ack) = acks.pop_front()
            {
                last = ack.await?.sequence;
            }
            acks.push_back(jetstream.send_publish(names.account_subject(&account_id), message).await?);
        }
    }
    for ack in acks {
        last = ack.await?.sequence;
    }
    Ok(last)
}
