//! The read side's errors at its gRPC boundary, and their one mapping to
//! `tonic::Status`.

use std::sync::Arc;

use read_model::StoreError;
use shared::validation::ValidationError;
use tonic::{Code, Status};

use crate::{domain::PageTokenError, freshness::Behind};

/// Why a query was not answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// INVALID_ARGUMENT: a malformed field.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// INVALID_ARGUMENT: a negative page size or a foreign page token.
    #[error(transparent)]
    Page(#[from] PageTokenError),
    /// NOT_FOUND: the read model has no such account.
    #[error("account {0} is not in the read model")]
    NotFound(String),
    /// UNAVAILABLE: the read model did not reach `min_position` in time.
    #[error(
        "the read model has applied {projection} up to position {reached}, behind the requested min_position {wanted}, \
         after waiting {waited:?}; retry later",
        projection = .0.projection.name(), reached = .0.reached, wanted = .0.wanted, waited = .0.waited
    )]
    Behind(Behind),
    /// UNAVAILABLE: the service has not connected to the read store yet.
    #[error("the read store is not connected yet; retry later")]
    NotReady,
    /// UNAVAILABLE: the read store cannot be reached.
    #[error("the read store is unavailable; retry later")]
    Store(#[source] Arc<StoreError>),
}

impl From<StoreError> for QueryError {
    fn from(error: StoreError) -> Self {
        Self::Store(Arc::new(error))
    }
}

impl QueryError {
    /// The gRPC status code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::Page(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::Behind(_) | Self::NotReady | Self::Store(_) => Code::Unavailable,
        }
    }
}

impl From<QueryError> for Status {
    fn from(error: QueryError) -> Self {
        if let QueryError::Store(cause) = &error {
            tracing::warn!(error = %cause, "query failed");
        }
        Status::new(error.code(), error.to_string())
    }
}
