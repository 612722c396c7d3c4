//! Wiring: the health endpoint, the NATS connection, the read store, and
//! the projection loop, until shutdown.

use std::{future::Future, net::SocketAddr};

use async_nats::jetstream;
use futures::FutureExt;
use read_model::ReadStore;
use shared::{grpc_server, retry};
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;

use crate::{
    app::{SERVICE_NAME, set_health},
    config::Config,
    error::ProjectorError,
    placement,
};

/// A bound, not yet running projector.
pub struct Application {
    listener: TcpListener,
    config: Config,
}

impl Application {
    /// Binds the health endpoint's listener (port 0 picks a free port).
    pub async fn build(config: Config) -> Result<Self, ProjectorError> {
        let listener =
            grpc_server::bind(config.listen_addr).await.map_err(|e| ProjectorError::Health(e.to_string()))?;
        Ok(Self { listener, config })
    }

    /// The health endpoint's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen_addr)
    }

    /// Projects until `shutdown` completes; finishes the batch in hand first.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ProjectorError> {
        let Self { listener, config } = self;
        let shutdown = shutdown.shared();
        let (reporter, health_service) = grpc_server::health(SERVICE_NAME).await;
        let health_server = tokio::spawn(
            Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.clone()),
        );

        let work = async {
            let (stream, store) = tokio::join!(connect_event_log(&config), connect_store(&config));
            let result = placement::project(store.clone(), stream, &config, reporter.clone(), shutdown.clone()).await;
            store.close().await;
            result
        };
        let result = tokio::select! {
            result = work => result,
            () = shutdown.clone() => Ok(()),
        };
        set_health(&reporter, ServingStatus::NotServing).await;
        if result.is_err() {
            // Nothing to drain: the health server would only wait for a signal.
            health_server.abort();
        }
        let _ = health_server.await;
        tracing::info!("projector stopped");
        result
    }
}

/// Connects to NATS and waits until the event stream exists (write-service
/// creates it), retrying forever: the projector is useless without it.
pub async fn connect_event_log(config: &Config) -> jetstream::stream::Stream {
    retry::until_ok("the event log", || try_connect_event_log(config)).await
}

/// Connects to NATS and opens the event stream, once.
pub async fn try_connect_event_log(config: &Config) -> Result<jetstream::stream::Stream, ProjectorError> {
    let client = config
        .nats
        .connect_options(SERVICE_NAME)
        .await
        .map_err(ProjectorError::event_log("configure the NATS connection"))?
        .max_reconnects(None)
        .connect(config.nats.servers())
        .await
        .map_err(ProjectorError::event_log("connect to NATS"))?;
    let jetstream = jetstream::ContextBuilder::new().timeout(config.nats.request_timeout).build(client);
    jetstream.get_stream(&config.event_log.stream).await.map_err(ProjectorError::event_log("find the event stream"))
}

async fn connect_store(config: &Config) -> ReadStore {
    // A connection per partition's projector, and a few for the rest.
    let connections = 4 + config.partitions.get();
    retry::until_ok("the read store", || config.read_store(connections)).await
}
