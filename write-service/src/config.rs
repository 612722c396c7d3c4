//! write-service's settings: flags with environment fallbacks, documented
//! here so that `write-service --help` is the reference. Defaults run
//! locally next to a NATS server on 127.0.0.1:4222. `OTEL_*` variables are
//! read by the OpenTelemetry SDK, not here.

use std::{net::SocketAddr, num::NonZeroUsize, time::Duration};

use clap::Parser;
use shared::event_log::{EventLogArgs, NatsArgs};

/// The write side of the bank: decides account commands and appends their
/// events to the JetStream event log.
#[derive(Debug, Clone, Parser)]
#[command(name = "write-service", version, about)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:50051")]
    pub listen_addr: SocketAddr,

    #[command(flatten)]
    pub server: shared::grpc_server::ServerArgs,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub event_log: EventLogArgs,

    /// Replicas of the event stream when this service creates it: 1 for a
    /// single server, 3 for a 3-node JetStream cluster. An existing stream
    /// is never changed: one with another number of replicas keeps the
    /// service NOT_SERVING, saying so, until the two agree.
    #[arg(long, env = "EVENT_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,

    /// How long JetStream remembers a command's id (`Nats-Msg-Id`) to drop a
    /// duplicate append, when this service creates the stream. Retries of
    /// an account's recent commands are recognised beyond it too.
    #[arg(long, env = "EVENT_STREAM_DUPLICATE_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub duplicate_window: Duration,

    /// Of the appends whose trace is sampled, the fraction (0 to 1) whose
    /// path through the NATS servers is added to their trace: each server
    /// reports it (nats-server 2.11+ message tracing) and it becomes a
    /// `nats.server <name>` span under the PRODUCER span. 0: off.
    #[arg(long, env = "BROKER_TRACE_RATIO", default_value_t = 0.0, value_parser = ratio)]
    pub broker_trace_ratio: f64,

    /// How many accounts' state to keep in memory. Others are rebuilt from
    /// the event log when a command needs them.
    #[arg(long, env = "ACCOUNT_CACHE_CAPACITY", default_value = "100000")]
    pub account_cache_capacity: NonZeroUsize,

    /// How many recent command outcomes to keep in memory to answer retries
    /// (same `command_id`) without touching the event log.
    #[arg(long, env = "REPLY_CACHE_CAPACITY", default_value = "100000")]
    pub reply_cache_capacity: NonZeroUsize,
}

fn ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("{value:?} is not a fraction from 0 to 1")),
    }
}

/// The command line: the service by default, or an operation on the event
/// log, with the same settings.
#[derive(Debug, Clone, Parser)]
#[command(name = "write-service", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; without a subcommand, `serve`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve the command API (the default).
    Serve,
    /// Snapshot the event stream (events with their positions, and its
    /// consumers) into a new directory `<EVENT_STREAM>-<UTC time>` under
    /// --to-dir, while it keeps taking writes; then delete all but the
    /// newest --keep backups there. Needs a NATS user that may use the
    /// stream's snapshot API (the `admin` user in deploy/).
    Backup {
        /// Where backups are kept.
        #[arg(long)]
        to_dir: std::path::PathBuf,
        /// How many backups to keep (the newest).
        #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..))]
        keep: u32,
    },
    /// Recreate the event stream from a backup directory, with the same
    /// positions, configuration and consumers. Refuses while the stream
    /// exists. Stop the write-service first (it would create an empty
    /// stream when it starts), and see deploy/README.md "Backing up and
    /// restoring the event log" for the read model.
    Restore {
        /// The backup directory (`<EVENT_STREAM>-<UTC time>`).
        #[arg(long, required_unless_present = "latest_in", conflicts_with = "latest_in")]
        from: Option<std::path::PathBuf>,
        /// Or: the newest backup of EVENT_STREAM in this directory (what
        /// `backup --to-dir` wrote).
        #[arg(long)]
        latest_in: Option<std::path::PathBuf>,
    },
}
