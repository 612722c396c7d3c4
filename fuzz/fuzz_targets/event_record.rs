//! A message in the event log that the project may not have written: any
//! subject, headers and payload. Reading it never panics; what it accepts
//! is a well-formed event of the subject's account that re-encodes to the
//! same event.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use projector::domain::EventRecord;
use shared::{event_log::headers, events::AccountEvent};

const TYPES: [&str; 5] =
    ["bank.v1.AccountOpened", "bank.v1.FundsDeposited", "bank.v1.FundsWithdrawn", "bank.v1.AccountClosed", "x"];

#[derive(Arbitrary, Debug)]
struct Message<'a> {
    subject: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    payload: &'a [u8],
    /// Put a valid envelope for `account` first, so that the fuzzer spends
    /// its time in the payload decoding as well as in the envelope's.
    envelope: Option<(&'a str, u8)>,
}

fuzz_target!(|message: Message<'_>| {
    let mut pairs = Vec::new();
    let subject = match message.envelope {
        Some((account, type_index)) => {
            pairs.push((headers::SUBJECT, account));
            pairs.push((headers::AGGREGATE_VERSION, "1"));
            pairs.push((headers::TIME, "2026-11-26T10:00:00Z"));
            pairs.push((headers::TYPE, TYPES[usize::from(type_index) % TYPES.len()]));
            format!("bank.account.{account}")
        }
        None => message.subject.to_owned(),
    };
    pairs.extend(message.headers.iter().copied());
    let header = |name: &str| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| *value);

    if let Ok(record) = EventRecord::read(1, &subject, "bank", header, message.payload) {
        assert_eq!(Some(record.account_id.as_str()), subject.strip_prefix("bank.account."));
        assert!(!record.account_id.contains('.'));
        assert!(record.version > 0);
        let event = &record.event;
        let reencoded = event.encode(&record.account_id);
        assert_eq!(AccountEvent::decode(Some(event.type_name()), &record.account_id, &reencoded).as_ref(), Ok(event));
        if let AccountEvent::Deposited { amount } | AccountEvent::Withdrawn { amount } = event {
            assert!(*amount > 0);
        }
    }
});
