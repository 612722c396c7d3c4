//! The stack under test and how to talk to it.

use std::{future::Future, net::SocketAddr, pin::Pin, process::Stdio, sync::Once, time::Duration};

use clap::Parser;
use read_model::ReadStore;
use shared::proto::bank::v1::{
    self as pb, account_command_service_client::AccountCommandServiceClient,
    account_query_service_client::AccountQueryServiceClient,
};
use testkit::{NatsServer, eventually, free_port};
use tokio::{process::Child, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

pub(crate) const STREAM: &str = "TEST_EVENTS";
pub(crate) const PREFIX: &str = "test";

/// Which read store a test runs on.
pub(crate) enum Store {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Store {
    pub(crate) fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh database on the machine's PostgreSQL
    /// (`TEST_DATABASE_URL`, default postgres://postgres@127.0.0.1:5432/test).
    pub(crate) async fn postgres() -> Self {
        let base =
            std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let name = format!("read_model_{}", uuid::Uuid::new_v4().simple());
        sqlx::any::install_default_drivers();
        let mut admin =
            <sqlx::AnyConnection as sqlx::Connection>::connect(&base).await.expect("PostgreSQL is reachable");
        sqlx::Executor::execute(&mut admin, sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        Self::Postgres(format!("{prefix}/{name}"))
    }

    pub(crate) fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}/read-model.db", dir.path().display()),
            Self::Postgres(url) => url.clone(),
        }
    }
}

/// Both stores, one test each: `both_stores!(name)` runs `name(Store)`.
#[macro_export]
macro_rules! both_stores {
    ($test:ident) => {
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test($crate::helpers::Store::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test($crate::helpers::Store::postgres().await).await;
            }
        }
    };
}

fn install_tracer() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        opentelemetry::global::set_tracer_provider(opentelemetry_sdk::trace::SdkTracerProvider::builder().build());
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = shared::telemetry::init_logs();
        }
    });
}

/// An in-process service (write-service or read-service).
/// Stopped (aborted) when dropped.
pub(crate) struct InProcess {
    pub(crate) addr: SocketAddr,
    _stop: oneshot::Sender<()>,
    task: Option<JoinHandle<()>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl InProcess {
    /// Spawns `run` (the service, given its shutdown future) and waits
    /// until the service at `addr` reports SERVING.
    async fn run<F, Fut>(addr: SocketAddr, run: F) -> Self
    where
        F: FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(Box::pin(async move {
            let _ = stopped.await;
        })));
        let service = Self { addr, _stop: stop, task: Some(task) };
        wait_for_health(addr, ServingStatus::Serving).await;
        service
    }
}

pub(crate) async fn spawn_write_service(nats_url: &str) -> InProcess {
    install_tracer();
    let config = write_service::config::Config::parse_from([
        "write-service",
        "--listen-addr",
        "127.0.0.1:0",
        "--nats-url",
        nats_url,
        "--event-stream",
        STREAM,
        "--event-subject-prefix",
        PREFIX,
    ]);
    let app = write_service::startup::Application::build(config).await.unwrap();
    InProcess::run(app.local_addr(), |stopped| async move { app.run_until_stopped(stopped).await.unwrap() }).await
}

pub(crate) async fn spawn_read_service(store_url: &str, extra: &[&str]) -> InProcess {
    install_tracer();
    let mut args = vec!["read-service", "--listen-addr", "127.0.0.1:0", "--read-store-url", store_url];
    args.extend_from_slice(extra);
    let config = read_service::config::Config::parse_from(args);
    let app = read_service::startup::Application::build(config).await.unwrap();
    InProcess::run(app.local_addr(), |stopped| async move { app.run_until_stopped(stopped).await.unwrap() }).await
}

/// The projector binary.
pub(crate) struct ProjectorProcess {
    pub(crate) child: Child,
}

pub(crate) fn projector_command(nats_url: &str, store_url: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_projector"));
    command
        .env("NATS_URL", nats_url)
        .env("EVENT_STREAM", STREAM)
        .env("EVENT_SUBJECT_PREFIX", PREFIX)
        .env("READ_STORE_URL", store_url)
        .env("OTEL_SDK_DISABLED", "true")
        .env("RUST_LOG", if std::env::var_os("TEST_LOG").is_some() { "info" } else { "error" })
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

impl ProjectorProcess {
    pub(crate) async fn spawn(nats_url: &str, store_url: &str, env: &[(&str, &str)]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = projector_command(nats_url, store_url);
        command.env("LISTEN_ADDR", addr.to_string()).envs(env.iter().copied());
        let child = command.spawn().expect("start the projector binary");
        let process = Self { child };
        wait_for_health(addr, ServingStatus::Serving).await;
        process
    }

    pub(crate) async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

pub(crate) async fn wait_for_health(addr: SocketAddr, wanted: ServingStatus) {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    eventually(Duration::from_secs(20), &format!("{addr} to be {wanted:?}"), || {
        let mut health = HealthClient::new(channel.clone());
        async move {
            health
                .check(HealthCheckRequest { service: String::new() })
                .await
                .is_ok_and(|r| r.into_inner().status() == wanted)
        }
    })
    .await;
}

/// The whole system on one store.
pub(crate) struct Stack {
    pub(crate) nats: NatsServer,
    pub(crate) store: Store,
    pub(crate) projector: ProjectorProcess,
    _write: InProcess,
    _read: InProcess,
    pub(crate) commands: AccountCommandServiceClient<Channel>,
    pub(crate) queries: AccountQueryServiceClient<Channel>,
}

impl Stack {
    pub(crate) async fn start(store: Store) -> Self {
        Self::start_with(store, &[], &[]).await
    }

    pub(crate) async fn start_with(store: Store, projector_env: &[(&str, &str)], read_args: &[&str]) -> Self {
        let nats = NatsServer::start().await;
        let write = spawn_write_service(&nats.url()).await;
        let projector = ProjectorProcess::spawn(&nats.url(), &store.url(), projector_env).await;
        let read = spawn_read_service(&store.url(), read_args).await;
        let commands = AccountCommandServiceClient::new(channel(write.addr));
        let queries = AccountQueryServiceClient::new(channel(read.addr));
        Self { nats, store, projector, _write: write, _read: read, commands, queries }
    }

    /// Stops the read-service (aborting whatever it was doing) and starts a
    /// new one on the same store, on a new port.
    pub(crate) async fn restart_read_service(&mut self) {
        self._read = spawn_read_service(&self.store.url(), &[]).await;
        self.queries = AccountQueryServiceClient::new(channel(self._read.addr));
    }

    pub(crate) async fn restart_projector(&mut self, env: &[(&str, &str)]) {
        self.projector = ProjectorProcess::spawn(&self.nats.url(), &self.store.url(), env).await;
    }

    /// Opens `id` and returns the reply.
    pub(crate) async fn open(&self, id: &str, owner: &str) -> pb::CommandReply {
        let request = pb::OpenAccountRequest { account_id: id.into(), owner: owner.into(), command_id: String::new() };
        self.commands.clone().open_account(request).await.unwrap().into_inner()
    }

    pub(crate) async fn deposit(&self, id: &str, amount: i64) -> pb::CommandReply {
        let request = pb::DepositFundsRequest {
            account_id: id.into(),
            amount,
            command_id: String::new(),
            expected_version: None,
        };
        self.commands.clone().deposit_funds(request).await.unwrap().into_inner()
    }

    pub(crate) async fn withdraw(&self, id: &str, amount: i64) -> pb::CommandReply {
        let request = pb::WithdrawFundsRequest {
            account_id: id.into(),
            amount,
            command_id: String::new(),
            expected_version: None,
        };
        self.commands.clone().withdraw_funds(request).await.unwrap().into_inner()
    }

    /// The account as read-service answers it once `min_position` is applied.
    pub(crate) async fn account(&self, id: &str, min_position: u64) -> pb::Account {
        let request = pb::GetAccountRequest { account_id: id.into(), min_position };
        self.queries.clone().get_account(request).await.unwrap().into_inner()
    }

    /// The account once `min_position` is applied, asking again until
    /// `within` runs out: for a read side that is recovering (the read
    /// store's connections lost, a long catch-up), where one query may fail
    /// or outlast MAX_CONSISTENCY_WAIT.
    pub(crate) async fn account_within(&self, within: Duration, id: &str, min_position: u64) -> pb::Account {
        let what = format!("the read side to answer for {id} at {min_position}");
        testkit::eventually_some(within, &what, || {
            let mut queries = self.queries.clone();
            let request = pb::GetAccountRequest { account_id: id.into(), min_position };
            async move { queries.get_account(request).await.ok().map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Every history entry of `id`, through all pages.
    pub(crate) async fn history(&self, id: &str, min_position: u64) -> Vec<pb::HistoryEntry> {
        let mut entries = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = pb::GetAccountHistoryRequest {
                account_id: id.into(),
                page_size: 100,
                page_token: page_token.clone(),
                min_position,
            };
            let page = self.queries.clone().get_account_history(request).await.unwrap().into_inner();
            entries.extend(page.entries);
            if page.next_page_token.is_empty() {
                return entries;
            }
            page_token = page.next_page_token;
        }
    }

    /// A direct connection to the read store.
    pub(crate) async fn read_store(&self) -> ReadStore {
        ReadStore::connect(&self.store.url(), 2).await.unwrap()
    }

    /// The JetStream stream of the event log.
    pub(crate) async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.unwrap())
    }
}

pub(crate) fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy()
}

/// Resident memory of process `pid`, in MiB.
pub(crate) fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    kib / 1024.0
}

/// A writer lock on the read store, held by the test.
pub(crate) struct StoreLock(sqlx::Transaction<'static, sqlx::Any>);

impl StoreLock {
    pub(crate) async fn take(store: &Store) -> Self {
        sqlx::any::install_default_drivers();
        let url = match store {
            Store::Sqlite(_) => store.url(),
            Store::Postgres(url) => url.clone(),
        };
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        let take = match store {
            Store::Sqlite(_) => "UPDATE projection_checkpoints SET position = position",
            Store::Postgres(_) => "LOCK TABLE projection_checkpoints IN ACCESS EXCLUSIVE MODE",
        };
        sqlx::query(take).execute(&mut *tx).await.unwrap();
        Self(tx)
    }

    pub(crate) async fn release(self) {
        self.0.rollback().await.unwrap();
    }
}

/// An account and its history as facts about the bank: without when the
/// read model wrote them and how far it was (`projected_at`,
/// `as_of_position`), which a rebuild or another query legitimately
/// changes. The command's `trace_id` is a fact of the event: it stays.
pub(crate) fn facts(account: pb::Account, history: Vec<pb::HistoryEntry>) -> (pb::Account, Vec<pb::HistoryEntry>) {
    let history = history.into_iter().map(|entry| pb::HistoryEntry { projected_at: None, ..entry }).collect();
    (pb::Account { projected_at: None, as_of_position: 0, ..account }, history)
}
