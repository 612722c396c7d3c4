//! Validated values. Each is parsed once, at the edge, and is valid for the
//! rest of its life.

pub use shared::validation::{AccountId, Owner, ValidationError};

/// An amount of money in minor units (cents); always greater than zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount(i64);

impl Amount {
    /// Validates `value` as the request field `amount`.
    pub fn parse(value: i64) -> Result<Self, ValidationError> {
        if value > 0 {
            Ok(Self(value))
        } else {
            Err(ValidationError::new("amount", format!("must be greater than zero (got {value})")))
        }
    }

    /// The amount in minor units.
    pub fn minor_units(self) -> i64 {
        self.0
    }
}

/// A command's idempotency key: 1 to 128 printable ASCII characters without
/// spaces (it travels in a NATS header).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandId(String);

impl CommandId {
    /// The longest key accepted.
    pub const MAX_LEN: usize = 128;

    /// Validates the request field `command_id`; empty means "none".
    pub fn parse_optional(value: String) -> Result<Option<Self>, ValidationError> {
        const FIELD: &str = "command_id";
        if value.is_empty() {
            return Ok(None);
        }
        if value.len() > Self::MAX_LEN {
            return Err(ValidationError::new(
                FIELD,
                format!("is {} bytes long; at most {} are allowed", value.len(), Self::MAX_LEN),
            ));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValidationError::new(FIELD, "may only contain printable ASCII characters without spaces"));
        }
        Ok(Some(Self(value)))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_must_be_positive() {
        assert!(Amount::parse(0).is_err());
        assert!(Amount::parse(-5).is_err());
        assert_eq!(Amount::parse(5).unwrap().minor_units(), 5);
    }

    #[test]
    fn an_empty_command_id_means_none() {
        assert_eq!(CommandId::parse_optional(String::new()), Ok(None));
        assert!(CommandId::parse_optional("a b".into()).is_err());
        assert!(CommandId::parse_optional("x".repeat(129)).is_err());
        assert!(CommandId::parse_optional("9f0c-11".into()).unwrap().is_some());
    }
}
