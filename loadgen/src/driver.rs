//! Sending the load: sets the accounts up, then runs workers in a closed
//! loop (a fixed number in flight) or an open loop (a fixed rate, latency
//! measured from each operation's scheduled start, so a slow server cannot
//! hide its queueing), with a progress line on a terminal.

use std::{
    io::IsTerminal,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::{
    Context, KeyValue, global,
    trace::{SpanKind, TraceContextExt, Tracer},
};
use shared::{
    propagation,
    proto::bank::v1::{
        self as pb, account_command_service_client::AccountCommandServiceClient,
        account_query_service_client::AccountQueryServiceClient,
    },
};
use tokio::sync::Semaphore;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use crate::{
    config::Config,
    report::{Recorder, Report, Second},
    workload::{Operation, Picker, account_id},
};

/// `--measure-lag` probes the commands whose position is a multiple of this.
const LAG_SAMPLE: u64 = 10;

/// Why the load could not be sent at all.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("invalid address {0}: {1}")]
    Address(String, String),
    #[error("cannot read the TLS file {0}: {1}")]
    TlsFile(std::path::PathBuf, std::io::Error),
}

/// TLS for `https://` addresses, when a CA or a client certificate is given.
fn client_tls(config: &Config) -> Result<Option<ClientTlsConfig>, DriverError> {
    let read = |path: &std::path::PathBuf| std::fs::read(path).map_err(|e| DriverError::TlsFile(path.clone(), e));
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &config.tls_ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok((config.tls_ca_file.is_some() || config.tls_cert_file.is_some()).then_some(tls))
}

/// Shared by all workers.
struct Target {
    commands: AccountCommandServiceClient<Channel>,
    queries: AccountQueryServiceClient<Channel>,
    /// Per account, the position its last command returned.
    positions: Vec<AtomicU64>,
    read_your_writes: bool,
    measure_lag: bool,
    recorder: Mutex<Recorder>,
    /// Operations and errors finished in each second of the run so far.
    timeline: Mutex<Vec<Second>>,
    tracer: global::BoxedTracer,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `config`'s load and returns the report.
pub async fn run(config: &Config) -> Result<Report, DriverError> {
    let tls = client_tls(config)?;
    let channel = |addr: &str| {
        let invalid = |e: &dyn std::fmt::Display| DriverError::Address(addr.to_owned(), e.to_string());
        let mut endpoint = Channel::from_shared(addr.to_owned()).map_err(|e| invalid(&e))?;
        match &tls {
            Some(tls) => endpoint = endpoint.tls_config(tls.clone()).map_err(|e| invalid(&e))?,
            // This build carries no system roots to verify a server with.
            None if addr.starts_with("https://") => return Err(invalid(&"https:// needs --tls-ca-file")),
            None => {}
        }
        Ok::<_, DriverError>(endpoint.connect_lazy())
    };
    let target = Arc::new(Target {
        commands: AccountCommandServiceClient::new(channel(&config.write_addr)?),
        queries: AccountQueryServiceClient::new(channel(&config.read_addr)?),
        positions: (0..config.accounts).map(|_| AtomicU64::new(0)).collect(),
        read_your_writes: config.read_your_writes,
        measure_lag: config.measure_lag,
        recorder: Mutex::new(Recorder::default()),
        timeline: Mutex::new(Vec::new()),
        tracer: global::tracer("loadgen"),
    });
    if !config.no_setup {
        setup(&target, config).await;
    }

    let started = Instant::now();
    let deadline = started + config.duration;
    let progress = tokio::spawn(progress(Arc::clone(&target), started, deadline));
    match config.rate {
        None => closed_loop(&target, config, deadline).await,
        Some(rate) => open_loop(&target, config, deadline, rate).await,
    }
    progress.abort();
    let elapsed = started.elapsed();
    let mut report = lock(&target.recorder).report(elapsed);
    report.timeline = std::mem::take(&mut *lock(&target.timeline));
    Ok(report)
}

/// Opens every account (an existing one is fine: runs can repeat) with
/// a balance large enough for the withdrawals to come.
async fn setup(target: &Arc<Target>, config: &Config) {
    let in_flight = Arc::new(Semaphore::new(config.concurrency.max(1) as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..config.accounts {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { break };
        let target = Arc::clone(target);
        tasks.spawn(async move {
            let _permit = permit;
            let id = account_id(index);
            let open = pb::OpenAccountRequest {
                account_id: id.clone(),
                owner: format!("Load {}", index % 100),
                command_id: format!("{id}-open"),
            };
            let started = Instant::now();
            let outcome = match target.commands.clone().open_account(open).await {
                Ok(reply) => {
                    target.positions[index as usize].store(reply.get_ref().position, Ordering::Relaxed);
                    let funds = pb::DepositFundsRequest {
                        account_id: id.clone(),
                        amount: 1_000_000_000,
                        command_id: format!("{id}-funds"),
                        expected_version: None,
                    };
                    let _ = target.commands.clone().deposit_funds(funds).await;
                    Ok(())
                }
                Err(status) if status.code() == Code::AlreadyExists => Ok(()),
                Err(status) => Err(status.code()),
            };
            lock(&target.recorder).record(Operation::OpenAccount, started.elapsed(), outcome);
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn closed_loop(target: &Arc<Target>, config: &Config, deadline: Instant) {
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..config.concurrency.max(1) {
        let target = Arc::clone(target);
        let mut picker = Picker::new(config, u64::from(worker) + 1);
        workers.spawn(async move {
            while Instant::now() < deadline {
                let (operation, account) = picker.pick();
                let started = Instant::now();
                let outcome = send(&target, operation, account).await;
                lock(&target.recorder).record(operation, started.elapsed(), outcome);
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

async fn open_loop(target: &Arc<Target>, config: &Config, deadline: Instant, rate: u32) {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let in_flight = Arc::new(Semaphore::new(config.concurrency.max(1) as usize));
    let mut picker = Picker::new(config, 1);
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut scheduled = start;
    while scheduled < deadline {
        tokio::time::sleep_until(scheduled.into()).await;
        let (operation, account) = picker.pick();
        match Arc::clone(&in_flight).try_acquire_owned() {
            Ok(permit) => {
                let target = Arc::clone(target);
                tasks.spawn(async move {
                    let _permit = permit;
                    let outcome = send(&target, operation, account).await;
                    // From the scheduled start: queueing delay counts.
                    lock(&target.recorder).record(operation, scheduled.elapsed(), outcome);
                });
            }
            Err(_) => lock(&target.recorder).dropped += 1,
        }
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        scheduled += interval;
    }
    while tasks.join_next().await.is_some() {}
}

/// Sends one operation inside a CLIENT span whose context travels as
/// `traceparent`, so every call can be found in the tracing backend.
async fn send(target: &Target, operation: Operation, account: u32) -> Result<(), Code> {
    let span = target
        .tracer
        .span_builder(operation.name())
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("rpc.system.name", "grpc"),
            KeyValue::new("loadgen.account", i64::from(account)),
        ])
        .start(&target.tracer);
    let cx = Context::new().with_span(span);
    let id = account_id(account);
    let position = &target.positions[account as usize];
    let min_position = if target.read_your_writes { position.load(Ordering::Relaxed) } else { 0 };
    let outcome = match operation {
        Operation::OpenAccount | Operation::Visible => Ok(()),
        Operation::DepositFunds | Operation::WithdrawFunds => {
            let reply = if operation == Operation::DepositFunds {
                let request = pb::DepositFundsRequest {
                    account_id: id,
                    amount: 100,
                    command_id: String::new(),
                    expected_version: None,
                };
                target.commands.clone().deposit_funds(traced(&cx, request)).await
            } else {
                let request = pb::WithdrawFundsRequest {
                    account_id: id,
                    amount: 1,
                    command_id: String::new(),
                    expected_version: None,
                };
                target.commands.clone().withdraw_funds(traced(&cx, request)).await
            };
            match reply {
                Ok(reply) => {
                    let acked = Instant::now();
                    position.fetch_max(reply.get_ref().position, Ordering::Relaxed);
                    // One command in ten (by position) is probed, so that the
                    // probes add little read load to what they measure.
                    if target.measure_lag && reply.get_ref().position % LAG_SAMPLE == 0 {
                        let request = pb::GetAccountRequest {
                            account_id: account_id(account),
                            min_position: reply.get_ref().position,
                        };
                        let visible = target.queries.clone().get_account(traced(&cx, request)).await;
                        let outcome = visible.map(drop).map_err(|status| status.code());
                        lock(&target.recorder).record(Operation::Visible, acked.elapsed(), outcome);
                    }
                    Ok(())
                }
                Err(status) => Err(status),
            }
        }
        Operation::GetAccount => {
            let request = pb::GetAccountRequest { account_id: id, min_position };
            target.queries.clone().get_account(traced(&cx, request)).await.map(drop)
        }
        Operation::GetAccountHistory => {
            let request =
                pb::GetAccountHistoryRequest { account_id: id, page_size: 20, page_token: String::new(), min_position };
            target.queries.clone().get_account_history(traced(&cx, request)).await.map(drop)
        }
    };
    let outcome = outcome.map_err(|status| status.code());
    if let Err(code) = outcome {
        cx.span().set_status(opentelemetry::trace::Status::error(shared::grpc_telemetry::code_name(code)));
    }
    cx.span().end();
    outcome
}

fn traced<T>(cx: &Context, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    propagation::inject_into_grpc(cx, request.metadata_mut());
    request
}

/// Prints rate, errors and p99 so far once a second, on a terminal only.
async fn progress(target: Arc<Target>, started: Instant, deadline: Instant) {
    let terminal = std::io::stderr().is_terminal();
    let (mut last_done, mut last_errors) = (0, 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while Instant::now() < deadline {
        tick.tick().await;
        let (done, errors, p99) = lock(&target.recorder).progress();
        let second = Second { operations: done - last_done, errors: errors - last_errors };
        lock(&target.timeline).push(second);
        (last_done, last_errors) = (done, errors);
        if terminal {
            eprint!(
                "\r{:>4.0} s  {:>8} ops/s  {:>6} errors  p99 {:>8.2} ms   ",
                started.elapsed().as_secs_f64(),
                second.operations,
                errors,
                p99
            );
        }
    }
    if terminal {
        eprintln!();
    }
}
