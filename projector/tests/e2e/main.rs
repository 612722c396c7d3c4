//! End-to-end tests of the read side: write-service and read-service
//! in-process, the projector as its binary (so it can be killed), a private
//! nats-server, and each test on both read stores (a fresh SQLite file, a
//! fresh PostgreSQL database).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup;
mod broker;
mod cluster;
mod faults;
mod helpers;
mod hostile;
mod partitions;
mod poison;
mod promql;
mod provenance;
mod queries;
mod rebuild;
mod rehearsal;
mod roles;
mod run_local;
mod security;
mod soak;
mod telemetry;
mod top;
