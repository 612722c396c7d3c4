//! Spawning the service and talking to it like a client does.

use std::{net::SocketAddr, process::Stdio, sync::Once, time::Duration};

use async_nats::jetstream;
use clap::Parser;
use futures::StreamExt;
use shared::proto::bank::v1::{self as pb, account_command_service_client::AccountCommandServiceClient};
use tokio::{process::Child, sync::oneshot, task::JoinHandle};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use write_service::{config::Config, startup::Application};

pub(crate) const STREAM: &str = "TEST_EVENTS";
pub(crate) const PREFIX: &str = "test";

/// Spans need a real tracer provider to get ids (and so a `traceparent` on
/// every event); nothing is exported.
fn install_tracer() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        opentelemetry::global::set_tracer_provider(opentelemetry_sdk::trace::SdkTracerProvider::builder().build());
        // TEST_LOG=1 shows the service's logs on the test's stderr.
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = shared::telemetry::init_logs();
        }
    });
}

/// The configuration a test runs the service with.
pub(crate) fn config(nats_url: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "write-service",
        "--listen-addr",
        "127.0.0.1:0",
        "--nats-url",
        nats_url,
        "--event-stream",
        STREAM,
        "--event-subject-prefix",
        PREFIX,
        "--nats-request-timeout",
        "2s",
        "--shutdown-grace",
        "5s",
    ];
    args.extend_from_slice(extra);
    Config::parse_from(args)
}

/// A write-service running in this test process.
pub(crate) struct TestApp {
    pub(crate) addr: SocketAddr,
    pub(crate) client: AccountCommandServiceClient<Channel>,
    pub(crate) health: HealthClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestApp {
    /// Starts the service and waits until it reports SERVING.
    pub(crate) async fn spawn(nats_url: &str) -> Self {
        let app = Self::spawn_with(config(nats_url, &[])).await;
        app.wait_for_health(ServingStatus::Serving).await;
        app
    }

    /// Starts the service without waiting for it to be ready.
    pub(crate) async fn spawn_with(config: Config) -> Self {
        install_tracer();
        let application = Application::build(config).await.expect("bind");
        let addr = application.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            application
                .run_until_stopped(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("write-service failed");
        });
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        Self {
            addr,
            client: AccountCommandServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Asks the service to stop and waits until it has.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub(crate) async fn wait_for_health(&self, wanted: ServingStatus) {
        wait_for_health(&self.health, wanted).await;
    }

    /// What the liveness probe sees.
    pub(crate) async fn liveness(&self) -> Option<ServingStatus> {
        let request = HealthCheckRequest { service: shared::grpc_server::LIVENESS.into() };
        self.health.clone().check(request).await.ok().map(|r| r.into_inner().status())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls the health service (overall and the command service's own name).
pub(crate) async fn wait_for_health(health: &HealthClient<Channel>, wanted: ServingStatus) {
    testkit::eventually(Duration::from_secs(15), &format!("health {wanted:?}"), || {
        let mut health = health.clone();
        async move {
            let mut all = true;
            for service in ["", "bank.v1.AccountCommandService"] {
                let status =
                    health.check(HealthCheckRequest { service: service.into() }).await.map(|r| r.into_inner().status());
                all &= status.ok() == Some(wanted);
            }
            all
        }
    })
    .await;
}

/// write-service as a separate process (for kill -9 and SIGTERM).
pub(crate) struct ServiceProcess {
    pub(crate) child: Child,
    pub(crate) client: AccountCommandServiceClient<Channel>,
    pub(crate) health: HealthClient<Channel>,
}

impl ServiceProcess {
    pub(crate) async fn spawn(nats_url: &str) -> Self {
        Self::spawn_with(nats_url, &[]).await
    }

    /// With extra environment variables (they override the defaults here).
    pub(crate) async fn spawn_with(nats_url: &str, env: &[(&str, &str)]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_write-service"))
            .env("LISTEN_ADDR", addr.to_string())
            .env("NATS_URL", nats_url)
            .env("EVENT_STREAM", STREAM)
            .env("EVENT_SUBJECT_PREFIX", PREFIX)
            .env("OTEL_SDK_DISABLED", "true")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the write-service binary");
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        let process = Self {
            child,
            client: AccountCommandServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
        };
        wait_for_health(&process.health, ServingStatus::Serving).await;
        process
    }
}

pub(crate) fn open(account_id: &str) -> pb::OpenAccountRequest {
    pb::OpenAccountRequest { account_id: account_id.into(), owner: "Ada Lovelace".into(), command_id: String::new() }
}

pub(crate) fn deposit(account_id: &str, amount: i64) -> pb::DepositFundsRequest {
    pb::DepositFundsRequest { account_id: account_id.into(), amount, command_id: String::new(), expected_version: None }
}

pub(crate) fn withdraw(account_id: &str, amount: i64) -> pb::WithdrawFundsRequest {
    pb::WithdrawFundsRequest {
        account_id: account_id.into(),
        amount,
        command_id: String::new(),
        expected_version: None,
    }
}

pub(crate) fn close(account_id: &str) -> pb::CloseAccountRequest {
    pb::CloseAccountRequest { account_id: account_id.into(), command_id: String::new(), expected_version: None }
}

/// Asserts a call failed with `code` and a message containing `needle`.
#[track_caller]
pub(crate) fn assert_status<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, needle: &str) {
    match result {
        Ok(value) => panic!("expected {code:?}, got OK: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "status: {status:?}");
            assert!(status.message().contains(needle), "{:?} does not mention {needle:?}", status.message());
        }
    }
}

/// Every event in the test stream, in order: (subject, headers, payload, sequence).
pub(crate) async fn events(nats_url: &str) -> Vec<jetstream::message::StreamMessage> {
    let client = async_nats::connect(nats_url).await.unwrap();
    let jetstream = jetstream::new(client);
    let mut stream = jetstream.get_stream(STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut events = Vec::new();
    for sequence in 1..=last {
        if let Ok(message) = stream.direct_get(sequence).await {
            events.push(message);
        }
    }
    events
}

/// How many events the log holds for one account.
pub(crate) async fn count_events(nats_url: &str, account_id: &str) -> usize {
    let subject = format!("{PREFIX}.account.{account_id}");
    events(nats_url).await.into_iter().filter(|m| m.subject.as_str() == subject).count()
}

/// Drains a stream of futures' results into (ok, errors by code).
pub(crate) async fn collect<T>(results: impl futures::Stream<Item = Result<T, tonic::Status>>) -> (Vec<T>, Vec<Code>) {
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    futures::pin_mut!(results);
    while let Some(result) = results.next().await {
        match result {
            Ok(value) => ok.push(value),
            Err(status) => errors.push(status.code()),
        }
    }
    (ok, errors)
}
