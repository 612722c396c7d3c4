//! What every gRPC server here does the same way: TLS from PEM files
//! ([`crate::grpc_tls`], reloaded when they change),
//! reflection (v1 and v1alpha, so every grpcurl works), health reporting
//! for `""` and the service's own name (also on a plaintext port for probes
//! when the main one needs TLS), and a bounded drain on shutdown.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    server::NamedService,
    transport::{Server, server::TcpIncoming},
};
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

use crate::{
    grpc_telemetry::GrpcServerTelemetryLayer,
    grpc_tls::{self, Certificates, ServerTlsArgs},
    proto::FILE_DESCRIPTOR_SET,
};

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

/// The settings every gRPC server here shares; each service flattens them
/// into its own (`LISTEN_ADDR` stays the service's: its default differs).
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// Also answer health checks, in plaintext, on this address (for
    /// kubelet gRPC probes, which cannot speak TLS). Unset: health is only
    /// on LISTEN_ADDR.
    #[arg(long, env = "HEALTH_LISTEN_ADDR")]
    pub health_listen_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub tls: ServerTlsArgs,

    /// Largest request message accepted, in bytes; larger ones fail with
    /// OUT_OF_RANGE ("message length too large") before any work is done.
    #[arg(long, env = "MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    pub max_request_bytes: usize,

    /// On SIGTERM, how long in-flight requests may take to finish before the
    /// server stops anyway. Keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Connections older than this are asked to reconnect (HTTP/2 GOAWAY,
    /// in-flight calls finish within SHUTDOWN_GRACE), so that long-lived
    /// clients spread over new replicas after a scale-up or a rolling update
    /// instead of staying pinned to the pods they first reached.
    #[arg(long, env = "MAX_CONNECTION_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,
}

/// A gRPC server bound to its ports with [`ServerArgs`], not serving yet:
/// binding (and loading the TLS files) at build time makes a bad address or
/// certificate stop the start.
pub struct BoundServer {
    listen_addr: SocketAddr,
    listener: TcpListener,
    health_only: HealthOnly,
    certificates: Option<Arc<Certificates>>,
    args: ServerArgs,
}

impl BoundServer {
    /// Binds `listen_addr` (port 0 picks a free port) and the health port.
    pub async fn bind(listen_addr: SocketAddr, args: &ServerArgs) -> Result<Self, ServeError> {
        let certificates = args.tls.certificates()?;
        let listener = bind(listen_addr).await?;
        let health_only = HealthOnly::bind(args.health_listen_addr).await?;
        Ok(Self { listen_addr, listener, health_only, certificates, args: args.clone() })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address.
        self.listener.local_addr().unwrap_or(self.listen_addr)
    }

    /// Serves `service` of `side` with health (also on the health port),
    /// reflection and the SERVER-span layer, until `shutdown`; then health
    /// turns NOT_SERVING and in-flight calls get SHUTDOWN_GRACE. The
    /// connection policy: TLS from [`crate::grpc_tls`] when configured,
    /// connections recycled after MAX_CONNECTION_AGE.
    pub async fn serve<S>(
        self,
        side: &'static str,
        service_name: &'static str,
        (reporter, health): (HealthReporter, HealthServer<impl Health>),
        service: S,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError>
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let Self { listener, health_only, certificates, args, .. } = self;
        let _health_only = health_only.serve(health.clone());
        let (reflection_v1, reflection_v1alpha) = reflection()?;
        let (drain, signal) = Drain::new(shutdown, reporter, service_name, args.shutdown_grace);
        let addr = listener.local_addr().map_or_else(|_| "?".to_owned(), |addr| addr.to_string());
        tracing::info!(%addr, tls = certificates.is_some(), "{service_name} listening");
        let server = Server::builder()
            .max_connection_age(args.max_connection_age)
            .max_connection_age_grace(args.shutdown_grace)
            .layer(GrpcServerTelemetryLayer::new(side))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(grpc_tls::incoming(listener, certificates), signal);
        drain.run(server).await.map_err(ServeError::from)
    }
}

/// Binds `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
}

/// Reflection over `bank.v1` and `grpc.health.v1`: v1 for current clients,
/// v1alpha for older ones (grpcurl < 1.9).
fn reflection()
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
struct HealthOnly {
    listener: Option<TcpListener>,
}

impl HealthOnly {
    /// Binds `addr`, if there is one.
    async fn bind(addr: Option<SocketAddr>) -> Result<Self, ServeError> {
        let listener = match addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self { listener })
    }

    /// Serves `health` until the returned guard is dropped.
    fn serve(self, health: HealthServer<impl Health>) -> AbortOnDrop {
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
struct Drain {
    draining: oneshot::Receiver<()>,
    grace: Duration,
}

impl Drain {
    /// Returns the drain and the signal future to hand to tonic.
    fn new(
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
    async fn run(
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
