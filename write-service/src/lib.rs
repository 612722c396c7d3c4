//! write-service: the write side of the bank. It validates commands
//! ([`grpc`]), decides them against the account's state ([`domain`],
//! [`app`]) and appends the resulting events to the JetStream event log
//! ([`event_log`]). [`startup`] wires it into a gRPC server; [`config`]
//! documents every setting; [`backup`] backs the event log up and
//! restores it.

pub mod app;
pub mod backup;
pub mod broker_trace;
pub mod config;
pub mod domain;
pub mod error;
pub mod event_log;
pub mod grpc;
pub mod startup;
pub mod telemetry;
