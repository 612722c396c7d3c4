//! projector's settings: flags with environment fallbacks (`projector
//! --help` is the reference), local defaults.

use std::{
    net::SocketAddr,
    num::{NonZeroU32, NonZeroUsize},
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use read_model::Projection;
use shared::event_log::{EventLogArgs, NatsArgs};

/// The projection side of the bank: consumes the event log and keeps the
/// read model (account_summary, account_history) up to date, exactly once.
#[derive(Debug, Clone, Parser)]
#[command(name = "projector", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; without a subcommand, `run`.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consume the event log and project it (the default).
    Run,
    /// Bring the read store's schema up to date and exit (`run` does it
    /// too on start): a deploy step of its own, with a role that may
    /// change the schema.
    Migrate,
    /// Empty a projection and replay it from the start of the log, with a
    /// progress bar. Safe while the projector runs.
    Rebuild {
        /// The projection to rebuild (account_summary or account_history);
        /// all of them if omitted.
        #[arg(long)]
        projection: Option<Projection>,
        /// Re-lay the read model out in PROJECTOR_PARTITIONS partitions when
        /// it is projected in another count (every projection is rebuilt;
        /// stop the projectors of the old count first).
        #[arg(long)]
        repartition: bool,
    },
}

/// Settings shared by `run` and `rebuild`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address of the gRPC health endpoint (for Kubernetes probes).
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:50053")]
    pub listen_addr: SocketAddr,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub event_log: EventLogArgs,

    /// The read store: `sqlite://PATH` (created if missing) or
    /// `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(long, env = "READ_STORE_URL", default_value = "sqlite://data/read-model.db", hide_env_values = true)]
    pub read_store_url: shared::secrets::Secret,

    /// Bring the read store's schema up to date on start. `false`: only
    /// check that the schema this release needs is there (waiting for it
    /// until it is), so the projector's role needs no right to change the
    /// schema; `projector migrate` does that as a step of its own, with a
    /// role that may (deploy/: the projector pod's initContainer).
    #[arg(long, env = "READ_STORE_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub read_store_migrate: bool,

    /// Name of the durable JetStream consumer (with several partitions,
    /// `<name>-<k>-of-<n>` per partition). Processes of one name share the
    /// partitions.
    #[arg(long, env = "PROJECTOR_CONSUMER", default_value = "projector")]
    pub consumer: String,

    /// Partitions of the accounts, each projected by one process at a time
    /// with its own consumer and checkpoints; any number of processes share
    /// them through leases, and take over a dead one's within seconds. More
    /// than 1 needs PostgreSQL; changing it is a rebuild (docs/scaling.md).
    /// With PostgreSQL, a second process of 1 partition is a hot standby.
    #[arg(long, env = "PROJECTOR_PARTITIONS", default_value = "1")]
    pub partitions: NonZeroU32,

    /// Most events applied in one read-store transaction. Also bounds how
    /// many events are in flight (the consumer's max_ack_pending is twice
    /// this), and so the projector's memory.
    #[arg(long, env = "PROJECTOR_BATCH_SIZE", default_value = "500")]
    pub batch_size: NonZeroUsize,

    /// How long JetStream waits for an ack before redelivering. In-progress
    /// acks extend it while a batch is retried.
    #[arg(long, env = "PROJECTOR_ACK_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_wait: Duration,
}

impl Config {
    /// The read store, its schema brought up to date first unless
    /// READ_STORE_MIGRATE is false (then only checked).
    pub async fn read_store(&self, max_connections: u32) -> Result<read_model::ReadStore, read_model::StoreError> {
        let url = self.read_store_url.expose();
        if self.read_store_migrate {
            read_model::ReadStore::connect(url, max_connections).await
        } else {
            read_model::ReadStore::open(url, max_connections).await
        }
    }
}
