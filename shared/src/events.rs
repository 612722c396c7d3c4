//! The domain events of a bank account, as the write side produces them and
//! the read side consumes them, and their encoding in the event log.
//!
//! This is the Rust face of `proto/bank/v1/events.proto`: services work with
//! [`AccountEvent`]; only this module knows the protobuf messages.

use prost::Message;

use crate::proto::bank::v1 as pb;

/// Something that happened to an account. Amounts are minor units (cents).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountEvent {
    /// The account was opened for `owner`; always the first event.
    Opened { owner: String },
    /// `amount` (> 0) was added to the balance.
    Deposited { amount: i64 },
    /// `amount` (> 0) was taken from the balance.
    Withdrawn { amount: i64 },
    /// The account was closed; always the last event.
    Closed,
}

/// Why a message in the event log is not an [`AccountEvent`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The `ce-type` header is missing.
    #[error("the message has no event type header")]
    MissingType,
    /// The `ce-type` header names no event this version knows.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The payload is not the protobuf message its type says.
    #[error("the payload is not a valid {event_type}: {reason}")]
    Payload { event_type: &'static str, reason: String },
    /// The payload decodes, but breaks the schema's rules (e.g. amount <= 0).
    #[error("invalid {event_type}: {reason}")]
    Invalid { event_type: &'static str, reason: &'static str },
    /// The payload is another account's event than its subject's: the
    /// account id travels in both, and they must agree.
    #[error("the payload is an event of account {found:?}, its subject's account is {expected:?}")]
    OtherAccount { expected: String, found: String },
}

impl AccountEvent {
    /// The event's type name, as in the `ce-type` header (the protobuf
    /// message's full name, e.g. `bank.v1.FundsDeposited`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Opened { .. } => OPENED,
            Self::Deposited { .. } => DEPOSITED,
            Self::Withdrawn { .. } => WITHDRAWN,
            Self::Closed => CLOSED,
        }
    }

    /// The protobuf payload of this event for account `account_id`.
    pub fn encode(&self, account_id: &str) -> Vec<u8> {
        let account_id = account_id.to_owned();
        match self {
            Self::Opened { owner } => pb::AccountOpened { account_id, owner: owner.clone() }.encode_to_vec(),
            Self::Deposited { amount } => pb::FundsDeposited { account_id, amount: *amount }.encode_to_vec(),
            Self::Withdrawn { amount } => pb::FundsWithdrawn { account_id, amount: *amount }.encode_to_vec(),
            Self::Closed => pb::AccountClosed { account_id }.encode_to_vec(),
        }
    }

    /// Decodes a payload of type `event_type` (the `ce-type` header) from
    /// the subject of `account_id`: the payload's own account id must be
    /// that one.
    pub fn decode(event_type: Option<&str>, account_id: &str, payload: &[u8]) -> Result<Self, DecodeError> {
        fn decode_as<M: Message + Default>(event_type: &'static str, bytes: &[u8]) -> Result<M, DecodeError> {
            M::decode(bytes).map_err(|e| DecodeError::Payload { event_type, reason: e.to_string() })
        }
        fn positive(event_type: &'static str, amount: i64) -> Result<i64, DecodeError> {
            if amount > 0 {
                Ok(amount)
            } else {
                Err(DecodeError::Invalid { event_type, reason: "amount must be greater than zero" })
            }
        }
        let (payload_account, event) = match event_type.ok_or(DecodeError::MissingType)? {
            OPENED => {
                let event: pb::AccountOpened = decode_as(OPENED, payload)?;
                (event.account_id, Self::Opened { owner: event.owner })
            }
            DEPOSITED => {
                let event: pb::FundsDeposited = decode_as(DEPOSITED, payload)?;
                (event.account_id, Self::Deposited { amount: positive(DEPOSITED, event.amount)? })
            }
            WITHDRAWN => {
                let event: pb::FundsWithdrawn = decode_as(WITHDRAWN, payload)?;
                (event.account_id, Self::Withdrawn { amount: positive(WITHDRAWN, event.amount)? })
            }
            CLOSED => {
                let event: pb::AccountClosed = decode_as(CLOSED, payload)?;
                (event.account_id, Self::Closed)
            }
            other => return Err(DecodeError::UnknownType(other.to_owned())),
        };
        if payload_account != account_id {
            return Err(DecodeError::OtherAccount { expected: account_id.to_owned(), found: payload_account });
        }
        Ok(event)
    }
}

const OPENED: &str = "bank.v1.AccountOpened";
const DEPOSITED: &str = "bank.v1.FundsDeposited";
const WITHDRAWN: &str = "bank.v1.FundsWithdrawn";
const CLOSED: &str = "bank.v1.AccountClosed";

#[cfg(test)]
mod tests {
    use prost::Name;

    use super::*;

    #[test]
    fn type_names_are_the_protobuf_full_names() {
        assert_eq!(OPENED, pb::AccountOpened::full_name());
        assert_eq!(DEPOSITED, pb::FundsDeposited::full_name());
        assert_eq!(WITHDRAWN, pb::FundsWithdrawn::full_name());
        assert_eq!(CLOSED, pb::AccountClosed::full_name());
    }

    #[test]
    fn every_event_survives_encode_and_decode() {
        let events = [
            AccountEvent::Opened { owner: "Ada Lovelace".into() },
            AccountEvent::Deposited { amount: 1_500 },
            AccountEvent::Withdrawn { amount: 20 },
            AccountEvent::Closed,
        ];
        for event in events {
            let bytes = event.encode("acc-1");
            assert_eq!(AccountEvent::decode(Some(event.type_name()), "acc-1", &bytes), Ok(event.clone()));
            assert!(matches!(
                AccountEvent::decode(Some(event.type_name()), "acc-2", &bytes),
                Err(DecodeError::OtherAccount { .. })
            ));
        }
    }

    #[test]
    fn garbage_is_reported_not_misread() {
        assert_eq!(AccountEvent::decode(None, "a", b""), Err(DecodeError::MissingType));
        assert_eq!(
            AccountEvent::decode(Some("bank.v1.Mystery"), "a", b""),
            Err(DecodeError::UnknownType("bank.v1.Mystery".into()))
        );
        assert!(matches!(
            AccountEvent::decode(Some(DEPOSITED), "a", &[0xff, 0xff, 0xff]),
            Err(DecodeError::Payload { .. })
        ));
        let zero = pb::FundsDeposited { account_id: "a".into(), amount: 0 }.encode_to_vec();
        assert!(matches!(AccountEvent::decode(Some(DEPOSITED), "a", &zero), Err(DecodeError::Invalid { .. })));
    }
}
