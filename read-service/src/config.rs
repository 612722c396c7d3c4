//! read-service's settings: flags with environment fallbacks (`read-service
//! --help` is the reference), local defaults. `OTEL_*` is the SDK's.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;

/// The read side of the bank: answers account queries from the read model.
#[derive(Debug, Clone, Parser)]
#[command(name = "read-service", version, about)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:50052")]
    pub listen_addr: SocketAddr,

    #[command(flatten)]
    pub server: shared::grpc_server::ServerArgs,

    /// The read store the projector writes: `sqlite://PATH` or
    /// `postgres://USER:PASSWORD@HOST/DB`.
    #[arg(long, env = "READ_STORE_URL", default_value = "sqlite://data/read-model.db", hide_env_values = true)]
    pub read_store_url: shared::secrets::Secret,

    /// Connections to the read store.
    #[arg(long, env = "READ_STORE_MAX_CONNECTIONS", default_value_t = 8)]
    pub read_store_max_connections: u32,

    /// Longest a query with `min_position` waits for the read model to
    /// reach it (a shorter request deadline wins) before UNAVAILABLE.
    #[arg(long, env = "MAX_CONSISTENCY_WAIT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_consistency_wait: Duration,

    /// Secret that signs page tokens. Give every replica the same one, or a
    /// token only works on the replica that issued it. Unset: a random
    /// secret per process (fine for one local replica).
    #[arg(long, env = "PAGE_TOKEN_SECRET", hide_env_values = true)]
    pub page_token_secret: Option<shared::secrets::Secret>,
}
