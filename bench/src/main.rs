//! What the benchmarks (scripts/bench.sh, docs/benchmarks.md) measure the
//! services against, on the same machine in the same run:
//!
//! - `write-server`: a bare tonic AccountCommandService whose handlers only
//!   publish the event the real write path would publish (same payload
//!   encoding, same CloudEvents headers, a `Nats-Msg-Id`) to a stream
//!   configured like the event log, and await the ack. No validation, no
//!   aggregate, no per-account lock, no optimistic-concurrency check, no
//!   telemetry: the composed limit of gRPC + JetStream that the write path
//!   cannot beat.
//! - `read-server`: a bare tonic AccountQueryService answering GetAccount
//!   with the same `Account` shape from memory.
//! - `publish`: raw JetStream publishes with ack, a fixed number in flight,
//!   without gRPC; prints a JSON report like loadgen's.
//! - `otlp-sink`: an OTLP/gRPC receiver that accepts and drops everything,
//!   so that the telemetry-cost runs pay for exporting but not for a
//!   collector's work.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use clap::{Parser, Subcommand};
use futures::{StreamExt, stream::FuturesUnordered};
use hdrhistogram::Histogram;
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use shared::{
    event_log::{Envelope, EventLogArgs},
    events::AccountEvent,
    proto::bank::v1::{
        self as pb,
        account_command_service_server::{AccountCommandService, AccountCommandServiceServer},
        account_query_service_server::{AccountQueryService, AccountQueryServiceServer},
    },
};
use tonic::{Request, Response, Status, transport::Server};
use write_service::event_log::{EventLog, StreamSettings};

#[derive(Debug, Parser)]
#[command(about = "Baselines for the benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// gRPC commands that only publish to JetStream and await the ack.
    WriteServer {
        #[arg(long, default_value = "127.0.0.1:50061")]
        listen: SocketAddr,
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// Stream and subjects of its own, configured like the event log.
        #[arg(long, default_value = "BASELINE_EVENTS")]
        stream: String,
        #[arg(long, default_value = "baseline")]
        subject_prefix: String,
    },
    /// gRPC GetAccount answered from memory.
    ReadServer {
        #[arg(long, default_value = "127.0.0.1:50062")]
        listen: SocketAddr,
    },
    /// Raw JetStream publishes with ack; prints a JSON report.
    Publish {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[arg(long, default_value = "BASELINE_EVENTS")]
        stream: String,
        #[arg(long, default_value = "baseline")]
        subject_prefix: String,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 5_000)]
        accounts: u32,
    },
    /// Fills the event log (creating its stream as the write-service does)
    /// with valid events: per account an AccountOpened, then deposits.
    Seed {
        #[arg(long, default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        #[arg(long, default_value = "BANK_EVENTS")]
        stream: String,
        #[arg(long, default_value = "bank")]
        subject_prefix: String,
        /// Accounts are named `<prefix>N`; loadgen's are `loadgen-N`.
        #[arg(long, default_value = "loadgen-")]
        account_prefix: String,
        #[arg(long, default_value_t = 1_000)]
        accounts: usize,
        #[arg(long, default_value_t = 10)]
        events_per_account: u64,
    },
    /// Accepts OTLP/gRPC traces and metrics and drops them.
    OtlpSink {
        #[arg(long, default_value = "127.0.0.1:4317")]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match Cli::parse().command {
        Command::WriteServer { listen, nats_url, stream, subject_prefix } => {
            let events = BaselineLog::open(&nats_url, stream, subject_prefix).await?;
            Server::builder()
                .add_service(AccountCommandServiceServer::new(BaselineCommands { events: Arc::new(events) }))
                .serve(listen)
                .await?;
        }
        Command::ReadServer { listen } => {
            Server::builder().add_service(AccountQueryServiceServer::new(MemoryQueries)).serve(listen).await?;
        }
        Command::Publish { nats_url, stream, subject_prefix, concurrency, duration, accounts } => {
            let events = BaselineLog::open(&nats_url, stream, subject_prefix).await?;
            publish(&events, concurrency, duration, accounts).await;
        }
        Command::Seed { nats_url, stream, subject_prefix, account_prefix, accounts, events_per_account } => {
            let events = BaselineLog::open(&nats_url, stream, subject_prefix).await?;
            let last =
                testkit::event_log::seed(&nats_url, &events.names, &account_prefix, accounts, events_per_account)
                    .await
                    .map_err(|e| e.to_string())?;
            println!("{}", serde_json::json!({ "last_position": last }));
        }
        Command::OtlpSink { listen } => {
            Server::builder()
                .add_service(TraceServiceServer::new(Sink))
                .add_service(MetricsServiceServer::new(Sink))
                .serve(listen)
                .await?;
        }
    }
    Ok(())
}

/// A stream created exactly as the write-service creates the event log,
/// published to as the write path publishes, minus the concurrency check.
struct BaselineLog {
    jetstream: jetstream::Context,
    names: EventLogArgs,
}

impl BaselineLog {
    async fn open(url: &str, stream: String, subject_prefix: String) -> Result<Self, Box<dyn std::error::Error>> {
        let client = async_nats::connect(url).await?;
        let names = EventLogArgs { stream, subject_prefix };
        let settings = StreamSettings { replicas: 1, duplicate_window: Duration::from_secs(120) };
        EventLog::open(client.clone(), names.clone(), &settings, Duration::from_secs(5)).await?;
        Ok(Self { jetstream: jetstream::new(client), names })
    }

    async fn append(&self, account_id: &str, event: &AccountEvent) -> Result<u64, String> {
        let event_id = uuid::Uuid::new_v4().to_string();
        let envelope = Envelope {
            event_id: &event_id,
            source: "baseline",
            event_type: event.type_name(),
            time: "2026-11-26T00:00:00.000000Z",
            account_id,
            version: 2,
            balance: 0,
            command_id: None,
        };
        let mut message_headers = envelope.headers();
        message_headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let publish = jetstream::message::PublishMessage::build()
            .payload(event.encode(account_id).into())
            .headers(message_headers)
            .message_id(envelope.message_id());
        let ack = self
            .jetstream
            .send_publish(self.names.account_subject(account_id), publish)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(ack.sequence)
    }
}

struct BaselineCommands {
    events: Arc<BaselineLog>,
}

impl BaselineCommands {
    async fn reply(&self, account_id: String, event: AccountEvent) -> Result<Response<pb::CommandReply>, Status> {
        let position = self.events.append(&account_id, &event).await.map_err(Status::unavailable)?;
        Ok(Response::new(pb::CommandReply { account_id, version: 2, position }))
    }
}

#[tonic::async_trait]
impl AccountCommandService for BaselineCommands {
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let request = request.into_inner();
        self.reply(request.account_id, AccountEvent::Opened { owner: request.owner }).await
    }

    async fn deposit_funds(
        &self,
        request: Request<pb::DepositFundsRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let request = request.into_inner();
        self.reply(request.account_id, AccountEvent::Deposited { amount: request.amount }).await
    }

    async fn withdraw_funds(
        &self,
        request: Request<pb::WithdrawFundsRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let request = request.into_inner();
        self.reply(request.account_id, AccountEvent::Withdrawn { amount: request.amount }).await
    }

    async fn close_account(
        &self,
        request: Request<pb::CloseAccountRequest>,
    ) -> Result<Response<pb::CommandReply>, Status> {
        let request = request.into_inner();
        self.reply(request.account_id, AccountEvent::Closed).await
    }
}

/// Every account exists, with the same fields the read side fills.
struct MemoryQueries;

#[tonic::async_trait]
impl AccountQueryService for MemoryQueries {
    async fn get_account(&self, request: Request<pb::GetAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let request = request.into_inner();
        let now = prost_types::Timestamp { seconds: 1_795_000_000, nanos: 0 };
        Ok(Response::new(pb::Account {
            account_id: request.account_id,
            owner: "Load 7".into(),
            balance: 1_000_012_300,
            status: pb::AccountStatus::Open.into(),
            version: 124,
            position: request.min_position.max(98_765),
            opened_at: Some(now),
            updated_at: Some(now),
            projected_at: Some(now),
            as_of_position: request.min_position.max(98_765),
        }))
    }

    async fn list_accounts(
        &self,
        _request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        Err(Status::unimplemented("the baseline answers GetAccount only"))
    }

    async fn get_account_history(
        &self,
        _request: Request<pb::GetAccountHistoryRequest>,
    ) -> Result<Response<pb::GetAccountHistoryResponse>, Status> {
        Err(Status::unimplemented("the baseline answers GetAccount only"))
    }
}

/// `concurrency` publishers, each awaiting its ack before the next publish.
async fn publish(events: &BaselineLog, concurrency: usize, duration: Duration, accounts: u32) {
    let latencies = Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid"));
    let errors = Mutex::new(0u64);
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = FuturesUnordered::new();
    for worker in 0..concurrency {
        let (latencies, errors) = (&latencies, &errors);
        workers.push(async move {
            let mut n = worker as u32;
            while Instant::now() < deadline {
                let account = format!("loadgen-{}", n % accounts.max(1));
                n = n.wrapping_add(concurrency as u32);
                let sent = Instant::now();
                match events.append(&account, &AccountEvent::Deposited { amount: 100 }).await {
                    Ok(_) => {
                        let micros = sent.elapsed().as_micros() as u64;
                        let _ = latencies.lock().unwrap_or_else(PoisonError::into_inner).record(micros.max(1));
                    }
                    Err(_) => *errors.lock().unwrap_or_else(PoisonError::into_inner) += 1,
                }
            }
        });
    }
    while workers.next().await.is_some() {}
    drop(workers);
    let elapsed = started.elapsed().as_secs_f64();
    let latencies = latencies.into_inner().unwrap_or_else(PoisonError::into_inner);
    let ms = |q: f64| latencies.value_at_quantile(q) as f64 / 1000.0;
    let report = serde_json::json!({
        "operations": [{
            "operation": "Publish",
            "count": latencies.len(),
            "throughput": latencies.len() as f64 / elapsed,
            "p50_ms": ms(0.5),
            "p90_ms": ms(0.9),
            "p99_ms": ms(0.99),
            "max_ms": latencies.max() as f64 / 1000.0,
            "errors": errors.into_inner().unwrap_or_else(PoisonError::into_inner),
        }],
        "elapsed_s": elapsed,
    });
    println!("{report}");
}

struct Sink;

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        _request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        _request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}
