//! What every gRPC server here does the same way: TLS from PEM files
//! ([`crate::grpc_tls`], reloaded when they change),
//! reflection (v1 and v1alpha, so every grpcurl works), health reporting
//! for `""` and the service's own name (also on a plaintext port for probes
//! when the main one needs TLS), and a bounded drain on shutdown.

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{
    ServingStatus,
    pb::health_server::{Health, HealthServer},
    server::HealthReporter,
};
use tonic_reflection::server::{
    Builder, Error,
    v1::{ServerReflection as ReflectionV1, ServerReflectionServer as ReflectionV1Server},
    v1alpha::{ServerReflection as ReflectionV1Alpha, ServerReflectionServer as ReflectionV1AlphaServer},
};

use crate::proto::FILE_DESCRIPTOR_SET;

/// Why a gRPC server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The reflection service could not be built from the descriptors.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] Error),
    /// A TLS file (certificate, key or CA) cannot be read.
    #[error("cannot read the TLS file {path}: {source}")]
    TlsFile { path: PathBuf, source: std::io::Error },
    /// The TLS files do not make a usable configuration (not PEM, a key
    /// that does not match the certificate...): the reason.
    #[error("invalid gRPC TLS configuration: {0}")]
    Tls(String),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A server builder with the connection policy every service here uses:
/// connections recycled after `max_connection_age` (HTTP/2 GOAWAY;
/// in-flight calls get `grace`) so that long-lived clients spread over new
/// replicas. TLS is not tonic's here but [`crate::grpc_tls::incoming`]'s.
pub fn server(max_connection_age: Duration, grace: Duration) -> Server {
    Server::builder().max_connection_age(max_connection_age).max_connection_age_grace(grace)
}

/// Binds `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
}

/// Reflection over `bank.v1` and `grpc.health.v1`: v1 for current clients,
/// v1alpha for older ones (grpcurl < 1.9).
pub fn reflection()
-> Result<(ReflectionV1Server<impl ReflectionV1>, ReflectionV1AlphaServer<impl ReflectionV1Alpha>), Error> {
    let builder = || {
        Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// The health-check name for liveness probes: SERVING for as long as the
/// server answers at all. Readiness asks for `""`, which is NOT_SERVING
/// while a dependency (NATS, the read store) is unreachable; restarting the
/// pod would not bring that dependency back, so liveness must not follow it.
pub const LIVENESS: &str = "liveness";

/// The health service of a server that is not ready yet: `""` and `service`
/// NOT_SERVING until the caller reports otherwise, [`LIVENESS`] SERVING.
pub async fn health(service: &str) -> (HealthReporter, HealthServer<impl Health>) {
    let (reporter, server) = tonic_health::server::health_reporter();
    set_health(&reporter, service, ServingStatus::NotServing).await;
    reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
    (reporter, server)
}

/// Health alone, in plaintext, on its own port (HEALTH_LISTEN_ADDR):
/// kubelet's gRPC probes cannot speak TLS, so when the main port requires
/// it they ask this one. Stops when dropped.
pub struct HealthOnly {
    listener: Option<TcpListener>,
}

impl HealthOnly {
    /// Binds `addr`, if there is one.
    pub async fn bind(addr: Option<SocketAddr>) -> Result<Self, ServeError> {
        let listener = match addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self { listener })
    }

    /// Serves `health` until the returned guard is dropped.
    pub fn serve(self, health: HealthServer<impl Health>) -> AbortOnDrop {
        AbortOnDrop(self.listener.map(|listener| {
            tokio::spawn(async move {
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                if let Err(error) = Server::builder().add_service(health).serve_with_incoming(incoming).await {
                    tracing::error!(%error, "the health endpoint failed");
                }
            })
        }))
    }
}

/// Aborts its task when dropped.
pub struct AbortOnDrop(Option<JoinHandle<()>>);

impl AbortOnDrop {
    /// Owns `task`.
    pub fn new(task: JoinHandle<()>) -> Self {
        Self(Some(task))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Sets the health of the server (`""`) and of `service` together.
pub async fn set_health(reporter: &HealthReporter, service: &str, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(service, status).await;
}

/// The pieces of a graceful, bounded shutdown: pass `signal` to tonic's
/// `serve_with_incoming_shutdown` and the server's future to
/// [`Drain::run`]. On `shutdown`, health turns NOT_SERVING, tonic stops
/// accepting and drains in-flight calls; after `grace` it is stopped anyway.
pub struct Drain {
    draining: oneshot::Receiver<()>,
    grace: Duration,
}

impl Drain {
    /// Returns the drain and the signal future to hand to tonic.
    pub fn new(
        shutdown: impl Future<Output = ()> + Send + 'static,
        reporter: HealthReporter,
        service: &'static str,
        grace: Duration,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (draining_tx, draining) = oneshot::channel();
        let signal = async move {
            shutdown.await;
            tracing::info!("draining in-flight requests");
            set_health(&reporter, service, ServingStatus::NotServing).await;
            let _ = draining_tx.send(());
        };
        (Self { draining, grace }, signal)
    }

    /// Runs `server` until it stops by itself or the grace after the
    /// shutdown signal runs out.
    pub async fn run(
        self,
        server: impl Future<Output = Result<(), tonic::transport::Error>>,
    ) -> Result<(), tonic::transport::Error> {
        let Self { draining, grace } = self;
        let deadline = async move {
            if draining.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = server => result,
            () = deadline => {
                tracing::warn!(?grace, "in-flight requests did not finish within the shutdown grace; stopping anyway");
                Ok(())
            }
        }
    }
}
