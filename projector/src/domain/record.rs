//! An event as the projector reads it from the log: the envelope's facts
//! (position, account, version, time) and the decoded domain event.

use shared::{
    event_log::{EnvelopeError, StoredEnvelope},
    events::AccountEvent,
};

/// One event from the log, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The event's stream sequence.
    pub position: u64,
    /// The account it belongs to (the subject's last token).
    pub account_id: String,
    /// The account's version after this event.
    pub version: u64,
    /// When the event was produced (`ce-time`), µs since the epoch.
    pub occurred_at_us: i64,
    /// The `traceparent` of the command's PRODUCER span, if it sent a
    /// well-formed one (re-written from the parsed context: nothing else
    /// from the header is kept).
    pub command_trace: Option<String>,
    /// The domain event.
    pub event: AccountEvent,
}

/// Why a message in the log is not an event the projector can apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The subject is not `<prefix>.account.<id>`.
    #[error("subject {0:?} is not an account subject")]
    Subject(String),
    /// A header the envelope requires is missing or malformed.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The envelope's account is not the subject's.
    #[error("header ce-subject does not match the subject's account {0:?}")]
    OtherAccount(String),
    /// The payload is not the event its type says.
    #[error(transparent)]
    Decode(#[from] shared::events::DecodeError),
}

/// The account of an account subject (`<subject_prefix>.account.<id>`).
pub fn account_of_subject<'s>(subject: &'s str, subject_prefix: &str) -> Option<&'s str> {
    subject
        .strip_prefix(subject_prefix)
        .and_then(|rest| rest.strip_prefix(".account."))
        .filter(|id| !id.is_empty() && !id.contains('.'))
}

impl EventRecord {
    /// Reads the message at `position` on `subject` (the account subjects
    /// begin with `subject_prefix`). `header` looks a header up by name.
    pub fn read<'a>(
        position: u64,
        subject: &str,
        subject_prefix: &str,
        header: impl Fn(&str) -> Option<&'a str>,
        payload: &[u8],
    ) -> Result<Self, RecordError> {
        let account_id =
            account_of_subject(subject, subject_prefix).ok_or_else(|| RecordError::Subject(subject.to_owned()))?;
        let envelope = StoredEnvelope::new(header);
        if envelope.account_id()? != account_id {
            return Err(RecordError::OtherAccount(account_id.to_owned()));
        }
        let version = envelope.version()?;
        let occurred_at_us = envelope.occurred_at_us()?;
        let event = AccountEvent::decode(envelope.event_type(), account_id, payload)?;
        let command_trace = envelope.traceparent();
        Ok(Self { position, account_id: account_id.to_owned(), version, occurred_at_us, command_trace, event })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    fn valid() -> HashMap<&'static str, &'static str> {
        headers(&[
            ("ce-type", "bank.v1.FundsDeposited"),
            ("ce-subject", "acc-1"),
            ("ce-aggregateversion", "2"),
            ("ce-time", "2026-11-25T10:00:00.5Z"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ])
    }

    fn read(headers: &HashMap<&'static str, &'static str>, subject: &str) -> Result<EventRecord, RecordError> {
        let payload = AccountEvent::Deposited { amount: 5 }.encode("acc-1");
        EventRecord::read(7, subject, "bank", |name| headers.get(name).copied(), &payload)
    }

    #[test]
    fn a_well_formed_event_is_read() {
        let record = read(&valid(), "bank.account.acc-1").unwrap();
        assert_eq!(record.position, 7);
        assert_eq!(record.account_id, "acc-1");
        assert_eq!(record.version, 2);
        assert_eq!(record.occurred_at_us, 1_795_600_800_500_000);
        assert_eq!(record.event, AccountEvent::Deposited { amount: 5 });
        assert_eq!(record.command_trace.as_deref(), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    }

    #[test]
    fn a_malformed_or_missing_trace_context_is_no_command_trace_and_no_refusal() {
        for traceparent in [Some("00-3-32-01"), Some("<script>"), None] {
            let mut headers = valid();
            match traceparent {
                Some(value) => headers.insert("traceparent", value),
                None => headers.remove("traceparent"),
            };
            assert_eq!(read(&headers, "bank.account.acc-1").unwrap().command_trace, None, "{traceparent:?}");
        }
    }

    #[test]
    fn envelopes_the_project_did_not_write_are_refused_with_a_reason() {
        assert!(matches!(read(&valid(), "bank.other.acc-1"), Err(RecordError::Subject(_))));
        for missing in ["ce-subject", "ce-aggregateversion", "ce-time"] {
            let mut headers = valid();
            headers.remove(missing);
            assert!(
                matches!(read(&headers, "bank.account.acc-1"), Err(RecordError::Envelope(EnvelopeError { name, .. })) if name == missing)
            );
        }
        let mut headers = valid();
        headers.insert("ce-subject", "acc-2");
        assert!(read(&headers, "bank.account.acc-1").is_err());
        headers = valid();
        headers.insert("ce-aggregateversion", "zero");
        assert!(read(&headers, "bank.account.acc-1").is_err());
        headers = valid();
        headers.insert("ce-type", "bank.v1.Nonsense");
        assert!(matches!(read(&headers, "bank.account.acc-1"), Err(RecordError::Decode(_))));
        // The payload's own account id must be the subject's too.
        let other = AccountEvent::Deposited { amount: 5 }.encode("acc-2");
        let headers = valid();
        let read = EventRecord::read(7, "bank.account.acc-1", "bank", |name| headers.get(name).copied(), &other);
        assert!(matches!(read, Err(RecordError::Decode(shared::events::DecodeError::OtherAccount { .. }))));
    }
}
