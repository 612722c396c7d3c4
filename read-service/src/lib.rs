//! read-service: the read side of the bank. It answers account queries
//! ([`grpc`], [`app`]) from the read model the projector maintains, waiting
//! for `min_position` when asked to ([`freshness`]) and paging with signed
//! tokens ([`domain`]). [`startup`] wires the gRPC server; [`config`]
//! documents every setting.

pub mod app;
pub mod config;
pub mod domain;
pub mod error;
pub mod freshness;
pub mod grpc;
pub mod lookups;
pub mod startup;
pub mod telemetry;
