//! The projector's errors.

use read_model::StoreError;

/// Why the projector could not start, run or rebuild.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// The read store cannot be reached or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// NATS or JetStream refused a request.
    #[error("event log: {0}")]
    EventLog(String),
    /// Settings that cannot work together.
    #[error("{0}")]
    Settings(String),
    /// The health endpoint cannot be served.
    #[error("health endpoint: {0}")]
    Health(String),
}

impl ProjectorError {
    pub(crate) fn event_log(error: impl std::fmt::Display) -> Self {
        Self::EventLog(error.to_string())
    }
}
