//! The projection side's domain: what an event in the log says
//! ([`EventRecord`]) and how each projection folds it into its rows
//! ([`projections`]). Pure: no I/O, no clock, no NATS types.

pub mod projections;
mod record;

pub use projections::ProjectionError;
pub use record::{EventRecord, RecordError, account_of_subject};
