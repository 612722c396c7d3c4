//! projector: the projection side of the bank. It consumes the event log
//! with a durable JetStream consumer and keeps the read model
//! (`account_summary`, `account_history`) up to date exactly once
//! ([`app`]; its batch rules, pure, in [`batch`]), folding events with the
//! pure functions of [`domain`];
//! [`placement`] shares the partitions of the accounts between processes.
//! [`rebuild`] replays a projection from the start; [`startup`] wires the
//! health endpoint, NATS and the read store; [`config`] documents every
//! setting.

pub mod app;
pub mod batch;
pub mod config;
pub mod domain;
pub mod error;
pub mod placement;
pub mod rebuild;
pub mod startup;
pub mod telemetry;
