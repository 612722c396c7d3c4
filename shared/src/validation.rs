//! Validation of values that cross service boundaries: the account id is
//! a NATS subject token on the write side and a key on the read side, and
//! an owner's name is written on one side and filtered on on the other, so
//! both sides accept exactly the same values.

use std::fmt;

/// Why a request field is not acceptable; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct ValidationError {
    /// The request field, as named in the .proto.
    pub field: &'static str,
    /// What is wrong with it, for a person.
    pub reason: String,
}

impl ValidationError {
    /// A problem with the request field `field`.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self { field, reason: reason.into() }
    }
}

/// An account id: 1 to 64 of `A-Z a-z 0-9 _ -`. It becomes the last token
/// of a NATS subject, so `.`, `*`, `>` and whitespace must never pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

impl AccountId {
    /// The longest id accepted.
    pub const MAX_LEN: usize = 64;

    /// Validates `value` as the request field `account_id`.
    pub fn parse(value: String) -> Result<Self, ValidationError> {
        const FIELD: &str = "account_id";
        if value.is_empty() {
            return Err(ValidationError::new(FIELD, "is required"));
        }
        if value.len() > Self::MAX_LEN {
            return Err(ValidationError::new(
                FIELD,
                format!("is {} bytes long; at most {} are allowed", value.len(), Self::MAX_LEN),
            ));
        }
        if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
            return Err(ValidationError::new(
                FIELD,
                format!("contains {bad:?}; only A-Z, a-z, 0-9, '_' and '-' are allowed"),
            ));
        }
        Ok(Self(value))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An account holder's name: 1 to 200 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(String);

impl Owner {
    /// The longest name accepted, in characters.
    pub const MAX_CHARS: usize = 200;

    /// Validates `value` as the request field `owner`.
    pub fn parse(value: String) -> Result<Self, ValidationError> {
        const FIELD: &str = "owner";
        if value.trim().is_empty() {
            return Err(ValidationError::new(FIELD, "is required"));
        }
        let chars = value.chars().count();
        if chars > Self::MAX_CHARS {
            return Err(ValidationError::new(
                FIELD,
                format!("is {chars} characters long; at most {} are allowed", Self::MAX_CHARS),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(ValidationError::new(FIELD, "contains a control character"));
        }
        Ok(Self(value))
    }

    /// The name as a string.
    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_need_one_to_200_characters_without_control_characters() {
        assert!(Owner::parse(String::new()).is_err());
        assert!(Owner::parse("   ".into()).is_err());
        assert!(Owner::parse("Ada\nLovelace".into()).is_err());
        assert!(Owner::parse("é".repeat(201)).is_err());
        assert!(Owner::parse("é".repeat(200)).is_ok());
        assert!(Owner::parse("Ada Lovelace".into()).is_ok());
    }

    #[test]
    fn account_ids_that_could_change_a_nats_subject_are_rejected() {
        for bad in ["", "a.b", "*", ">", "a b", "a\tb", "é", "a/b", &"x".repeat(65)] {
            let error = AccountId::parse(bad.to_owned()).unwrap_err();
            assert_eq!(error.field, "account_id", "{bad:?}");
        }
        for good in ["a", "acc-1", "ACC_2", &"x".repeat(64)] {
            assert_eq!(AccountId::parse(good.to_owned()).unwrap().as_str(), good);
        }
    }
}
