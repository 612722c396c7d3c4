//! Wiring: binds the listener, connects to the event log in the background,
//! and serves gRPC (commands, health, reflection) until shutdown.
//!
//! Health is NOT_SERVING (for `""` and for `bank.v1.AccountCommandService`)
//! until NATS is connected and the stream exists, again whenever the NATS
//! connection drops, and from the moment shutdown starts.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Weak},
};

use async_nats::Event;
use shared::{
    grpc_server::{self, BoundServer},
    retry,
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    app::Accounts,
    broker_trace::BrokerTracing,
    config::Config,
    event_log::{EventLog, StreamSettings},
    grpc::CommandService,
};

/// The name health checks use for this service.
pub const SERVICE_NAME: &str = "bank.v1.AccountCommandService";

/// Why the service could not start or stopped abnormally.
pub use shared::grpc_server::ServeError as StartupError;

/// A bound, not yet running write-service.
pub struct Application {
    server: BoundServer,
    config: Config,
}

impl Application {
    /// Binds the listeners (port 0 picks a free port) and loads the TLS
    /// files, so that a bad address or certificate stops the start.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let server = BoundServer::bind(config.listen_addr, &config.server).await?;
        Ok(Self { server, config })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests
    /// (at most `shutdown_grace`).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self { server, config } = self;
        let health = grpc_server::health(SERVICE_NAME).await;
        let accounts = Arc::new(Accounts::new(config.account_cache_capacity, config.reply_cache_capacity));
        let connector = tokio::spawn(connect_event_log(config.clone(), Arc::downgrade(&accounts), health.0.clone()));
        let commands =
            CommandService::server(Arc::clone(&accounts)).max_decoding_message_size(config.server.max_request_bytes);
        let result = server.serve("write", SERVICE_NAME, health, commands, shutdown).await;
        connector.abort();
        tracing::info!("write-service stopped");
        result
    }
}

/// Connects to NATS and opens the event log, retrying until it works, then
/// reports SERVING. Holds `accounts` weakly so that a stopped service is not
/// kept alive by its NATS client's callbacks.
async fn connect_event_log(config: Config, accounts: Weak<Accounts>, reporter: HealthReporter) {
    let callback_accounts = accounts.clone();
    let callback_reporter = reporter.clone();
    let (disconnected, disconnects) = tokio::sync::watch::channel(0u64);
    let options = match config.nats.connect_options("write-service").await {
        Ok(options) => options,
        Err(error) => {
            tracing::error!(%error, "cannot configure the NATS connection; staying NOT_SERVING");
            return;
        }
    };
    let options = options.retry_on_initial_connect().max_reconnects(None).event_callback(move |event| {
        let accounts = callback_accounts.clone();
        let reporter = callback_reporter.clone();
        if matches!(event, Event::Disconnected) {
            // Before anything awaits: appends in flight fail at once.
            disconnected.send_modify(|count| *count += 1);
        }
        async move {
            match event {
                Event::Connected => {
                    tracing::info!("NATS connected");
                    if accounts.upgrade().is_some_and(|accounts| accounts.log().is_some()) {
                        set_health(&reporter, ServingStatus::Serving).await;
                    }
                }
                Event::Disconnected => {
                    tracing::warn!("NATS disconnected; commands fail with UNAVAILABLE until it is back");
                    set_health(&reporter, ServingStatus::NotServing).await;
                }
                other => tracing::info!(event = %other, "NATS event"),
            }
        }
    });
    let client = match options.connect(config.nats.servers()).await {
        Ok(client) => client,
        Err(error) => {
            let url = shared::secrets::redact_url(config.nats.url.expose());
            tracing::error!(%error, %url, "cannot use the NATS URL; staying NOT_SERVING");
            return;
        }
    };
    let settings =
        StreamSettings { replicas: usize::from(config.stream_replicas), duplicate_window: config.duplicate_window };
    let log = retry::until_ok("the event log", || {
        EventLog::open(client.clone(), config.event_log.clone(), &settings, config.nats.request_timeout)
    })
    .await
    .failing_appends_on(disconnects);
    let tracing = broker_tracing(&client, &config, &log).await;
    let log = log.tracing_the_broker(tracing);
    let Some(accounts) = accounts.upgrade() else { return };
    let connected = log.is_connected();
    accounts.attach(log);
    tracing::info!(stream = %config.event_log.stream, "event log ready");
    if connected {
        set_health(&reporter, ServingStatus::Serving).await;
    }
}

/// The broker tracing `config` asks for, if the servers can do it
/// (without it, appends go on untraced).
async fn broker_tracing(client: &async_nats::Client, config: &Config, log: &EventLog) -> Option<BrokerTracing> {
    BrokerTracing::start(client, &config.event_log, log, config.broker_trace_ratio)
        .await
        .inspect_err(|error| tracing::warn!(%error, "cannot trace the broker hop; appends go on without it"))
        .ok()
        .flatten()
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    grpc_server::set_health(reporter, SERVICE_NAME, status).await;
}
