//! Wiring: binds the listener, connects to the read store in the
//! background, and serves gRPC (queries, health, reflection) until shutdown.
//! Health is NOT_SERVING until the read store is reachable and its schema
//! (which the projector migrates) is the one this release reads.

use std::{future::Future, net::SocketAddr, sync::Arc};

use read_model::ReadStore;
use shared::{
    grpc_server::{self, BoundServer, ServeError},
    retry,
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{app::Queries, config::Config, domain::PageTokens, grpc::QueryService};

/// The name health checks use for this service.
pub const SERVICE_NAME: &str = "bank.v1.AccountQueryService";

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Binding, TLS, reflection or the server itself.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// No `PAGE_TOKEN_SECRET`, and the system's random number generator
    /// failed: page tokens would be signed with a guessable key.
    #[error("PAGE_TOKEN_SECRET is not set and the system's random number generator failed: refusing to start")]
    Randomness,
}

impl From<tonic::transport::Error> for StartupError {
    fn from(error: tonic::transport::Error) -> Self {
        Self::Serve(error.into())
    }
}

/// A bound, not yet running read-service.
pub struct Application {
    server: BoundServer,
    config: Config,
    page_token_key: Vec<u8>,
}

impl Application {
    /// Binds the listeners (port 0 picks a free port) and loads the TLS
    /// files, so that a bad address or certificate stops the start.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let server = BoundServer::bind(config.listen_addr, &config.server).await?;
        let page_token_key = match &config.page_token_secret {
            Some(secret) => secret.expose().as_bytes().to_vec(),
            None => {
                tracing::warn!("PAGE_TOKEN_SECRET is not set: page tokens only work on this replica until it restarts");
                random_key()?
            }
        };
        Ok(Self { server, config, page_token_key })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Serves until `shutdown` completes, then drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Self { server, config, page_token_key } = self;
        let health = grpc_server::health(SERVICE_NAME).await;
        let service = QueryService::default();
        let tokens = PageTokens::new(&page_token_key);
        let connector = tokio::spawn(connect(config.clone(), tokens, service.queries_slot(), health.0.clone()));
        let queries = service.into_server().max_decoding_message_size(config.server.max_request_bytes);
        let result = server.serve("read", SERVICE_NAME, health, queries, shutdown).await.map_err(StartupError::from);
        connector.abort();
        tracing::info!("read-service stopped");
        result
    }
}

/// Connects to the read store, retrying, then reports SERVING.
async fn connect(
    config: Config,
    tokens: PageTokens,
    slot: Arc<std::sync::OnceLock<Queries>>,
    reporter: HealthReporter,
) {
    // Only reads: the projector owns the schema, so this works on a role
    // that may only SELECT, and waits for the projector's migrations.
    let store = retry::until_ok("the read store", || {
        ReadStore::open(config.read_store_url.expose(), config.read_store_max_connections)
    })
    .await;
    let queries = Queries::new(store, config.read_store_max_connections, tokens, config.max_consistency_wait);
    let _ = slot.set(queries);
    grpc_server::set_health(&reporter, SERVICE_NAME, ServingStatus::Serving).await;
}

/// A key for this process alone. A failing system RNG stops the start: a
/// zeroed key would let anyone forge page tokens.
fn random_key() -> Result<Vec<u8>, StartupError> {
    use ring::rand::SecureRandom;
    let mut key = vec![0; 32];
    ring::rand::SystemRandom::new().fill(&mut key).map_err(|_| StartupError::Randomness)?;
    Ok(key)
}
