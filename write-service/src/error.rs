//! The write side's errors at its gRPC boundary, and their one mapping to
//! `tonic::Status`.

use tonic::{Code, Status};

use crate::{
    domain::{AccountId, DomainError, ValidationError},
    event_log::EventLogError,
};

/// Why a command was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// INVALID_ARGUMENT: a request field is malformed.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// NOT_FOUND, ALREADY_EXISTS, ABORTED (stale `expected_version`) or
    /// FAILED_PRECONDITION (a business rule), by `reason`.
    #[error("account {account_id} {reason}")]
    Rejected { account_id: AccountId, reason: DomainError },
    /// ABORTED: the account changed under every attempt; retrying is safe.
    #[error("account {account_id} changed concurrently on each of {attempts} attempts; retry the command")]
    Contention { account_id: AccountId, attempts: usize },
    /// UNAVAILABLE: the event log cannot be reached. The command may or may
    /// not have been appended: retry with the same `command_id`.
    /// The client reads a fixed summary of the cause; the cause itself
    /// (broker text included) stays in the log.
    #[error("the event log is unavailable ({}); retry, with the same command_id to make the retry safe", .0.summary())]
    Unavailable(#[source] EventLogError),
    /// INTERNAL: the account's log holds an event this version cannot read.
    #[error("account {account_id} cannot be loaded: its event log holds an event this service cannot read")]
    UnreadableLog { account_id: AccountId, source: EventLogError },
}

impl CommandError {
    /// Classifies an event-log failure on account `id`.
    pub fn from_log(id: &AccountId, error: EventLogError) -> Self {
        match error {
            EventLogError::Unreadable { .. } => Self::UnreadableLog { account_id: id.clone(), source: error },
            other => Self::Unavailable(other),
        }
    }

    /// The gRPC status code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Rejected { reason, .. } => match reason {
                DomainError::NotFound => Code::NotFound,
                DomainError::AlreadyExists => Code::AlreadyExists,
                DomainError::VersionMismatch { .. } => Code::Aborted,
                DomainError::Closed
                | DomainError::InsufficientFunds { .. }
                | DomainError::NonZeroBalance { .. }
                | DomainError::BalanceOverflow { .. } => Code::FailedPrecondition,
            },
            Self::Contention { .. } => Code::Aborted,
            Self::Unavailable(_) => Code::Unavailable,
            Self::UnreadableLog { .. } => Code::Internal,
        }
    }
}

impl From<CommandError> for Status {
    fn from(error: CommandError) -> Self {
        let code = error.code();
        if matches!(code, Code::Internal | Code::Unavailable) {
            tracing::warn!(error = %error, cause = ?std::error::Error::source(&error), "command failed");
        }
        Status::new(code, error.to_string())
    }
}
