//! The projector's errors.

use read_model::StoreError;

/// Why the projector could not start, run or rebuild.
#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    /// The read store cannot be reached or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// NATS or JetStream refused a request, or could not be reached.
    #[error("event log: could not {what}: {source}")]
    EventLog { what: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
    /// A replay was delivered an event past the one it expected.
    #[error("the replay skipped ahead of position {expected}; run the rebuild again")]
    ReplaySkipped { expected: u64 },
    /// The read model was projected from another log than the stream now
    /// holds: a log restored from a backup older than the read model, or
    /// replaced. Projecting on would skip the log's events at positions the
    /// read model has already applied; a rebuild projects it again.
    #[error(
        "the read model does not match the event log: it has applied events up to position {applied}, but {why}. \
         The log was probably restored from an older backup: project the read model again with `projector \
         rebuild` (deploy/README.md, \"Backing up and restoring the event log\")"
    )]
    NotThisLog { applied: u64, why: String },
    /// Settings that cannot work together.
    #[error("{0}")]
    Settings(String),
    /// The health endpoint cannot be served.
    #[error("health endpoint: {0}")]
    Health(String),
}

impl ProjectorError {
    /// `what` failed on the event log, for the error it is given.
    pub(crate) fn event_log<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
        what: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |source| Self::EventLog { what, source: source.into() }
    }
}
