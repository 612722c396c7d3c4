//! write-service's integration tests: the real service (in-process, or its
//! binary where a process must be killed) against a private nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cold_start;
mod commands;
mod concurrency;
mod event_log;
mod faults;
mod helpers;
mod reflection;
