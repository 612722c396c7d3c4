//! loadgen's settings (`loadgen --help` is the reference). The defaults
//! drive a local stack (`scripts/run-local.sh`) hard enough to make the
//! dashboards worth looking at.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

/// Drives the bank's write and read sides over gRPC and reports, per
/// operation, throughput, latency percentiles and errors by gRPC code.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", version, about)]
pub struct Config {
    /// What to send: commands, queries, or both.
    #[arg(value_enum, default_value_t = Workload::Mixed)]
    pub workload: Workload,

    /// write-service's address.
    #[arg(long, env = "LOADGEN_WRITE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub write_addr: String,

    /// read-service's address.
    #[arg(long, env = "LOADGEN_READ_ADDR", default_value = "http://127.0.0.1:50052")]
    pub read_addr: String,

    /// CA certificate (PEM) to verify `https://` addresses with.
    #[arg(long, env = "LOADGEN_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for servers that require mutual TLS, with
    /// `--tls-key-file`.
    #[arg(long, env = "LOADGEN_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, env = "LOADGEN_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// How many accounts the load spreads over (`loadgen-0` ...).
    #[arg(long, default_value_t = 1_000)]
    pub accounts: u32,

    /// How accounts are picked: every account alike, or a few hot ones.
    #[arg(long, value_enum, default_value_t = Distribution::Zipf)]
    pub distribution: Distribution,

    /// Skew of the zipfian distribution (higher: hotter hot accounts).
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,

    /// Share of reads in the mixed workload (0 to 1).
    #[arg(long, default_value_t = 0.8)]
    pub read_ratio: f64,

    /// Of the writes, the share that are WithdrawFunds (the rest are
    /// DepositFunds). 0 sends deposits only: one append per command, no
    /// refusals (what the benchmarks use).
    #[arg(long, default_value_t = 0.5)]
    pub withdraw_ratio: f64,

    /// Of the reads, the share that are GetAccountHistory (the rest are
    /// GetAccount).
    #[arg(long, default_value_t = 0.1)]
    pub history_ratio: f64,

    /// After one successful command in ten, query the account with the
    /// command's position as `min_position` and report, as the operation
    /// `Visible`, the time from the command's acknowledgement until the
    /// read side answered with it: the projection lag as a client sees it.
    #[arg(long)]
    pub measure_lag: bool,

    /// How long to send load.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Open loop: operations per second, started on schedule whether or not
    /// earlier ones finished (latency counts from the scheduled start).
    /// Without it: closed loop at `--concurrency`.
    #[arg(long)]
    pub rate: Option<u32>,

    /// Closed loop: operations in flight at once. Open loop: the most in
    /// flight before operations are counted as dropped.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u32,

    /// Queries carry the `position` the account's last command returned as
    /// `min_position` (read-your-writes).
    #[arg(long)]
    pub read_your_writes: bool,

    /// Do not open the accounts first (their commands then fail NOT_FOUND).
    #[arg(long)]
    pub no_setup: bool,

    /// Print the final report as JSON on stdout (for scripts).
    #[arg(long)]
    pub json: bool,
}

/// Which operations to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// DepositFunds and WithdrawFunds.
    Write,
    /// GetAccount and GetAccountHistory.
    Read,
    /// Both, by `--read-ratio`.
    Mixed,
}

/// How accounts are picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    Uniform,
    Zipf,
}
