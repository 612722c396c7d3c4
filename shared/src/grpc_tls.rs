//! TLS on the gRPC port, terminated here rather than by tonic so that a
//! renewed certificate is served without a restart: cert-manager (or any
//! rotation) rewrites the mounted Secret's files in place, and each new
//! connection's handshake uses what the files hold then. tonic's own TLS
//! reads them once.
//!
//! [`incoming`] accepts TCP connections, does the handshake (when TLS is
//! configured) off the accept loop, and hands tonic the established
//! [`Connection`]s.

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        crypto::ring,
        pki_types::{
            CertificateDer, PrivateKeyDer,
            pem::{self, PemObject},
        },
        server::WebPkiClientVerifier,
    },
    server::TlsStream,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::grpc_server::{AbortOnDrop, ServeError};

/// A client that never finishes its handshake must not hold a connection
/// (and a task) forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes in progress at most; more connections wait to be
/// accepted.
const MAX_HANDSHAKES: usize = 256;

/// TLS for a gRPC server, from PEM files (a mounted `kubernetes.io/tls`
/// Secret). Without a certificate the server speaks plaintext HTTP/2: for
/// local runs, or behind a mesh whose sidecar terminates TLS. The files
/// are read again for every new connection, so a renewed certificate (or
/// client CA) is served from the next handshake on, without a restart.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerTlsArgs {
    /// Server certificate chain (PEM). With GRPC_TLS_KEY_FILE set too, the
    /// gRPC port accepts TLS connections only.
    #[arg(long = "grpc-tls-cert-file", env = "GRPC_TLS_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,

    /// The server certificate's private key (PEM).
    #[arg(long = "grpc-tls-key-file", env = "GRPC_TLS_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,

    /// CA certificate(s) (PEM) that clients must present a certificate of
    /// (mutual TLS). Unset: any client that trusts the server may call.
    #[arg(long = "grpc-tls-client-ca-file", env = "GRPC_TLS_CLIENT_CA_FILE", requires = "cert_file")]
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The certificates, loaded and checked now so that a bad file stops
    /// the start; `None` for plaintext. Errors name the file, never its
    /// contents.
    pub fn certificates(&self) -> Result<Option<Arc<Certificates>>, ServeError> {
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else { return Ok(None) };
        let files = Files { cert: cert.clone(), key: key.clone(), client_ca: self.client_ca_file.clone() };
        let pem = files.read()?;
        let acceptor = acceptor(&pem).map_err(ServeError::Tls)?;
        Ok(Some(Arc::new(Certificates { files, current: Mutex::new((pem, acceptor)) })))
    }
}

/// The server's TLS configuration and the file contents it was made from.
pub struct Certificates {
    files: Files,
    current: Mutex<(Pem, TlsAcceptor)>,
}

impl Certificates {
    /// The configuration for the next handshake. The files are read again
    /// (a few KB, once per new connection, which HTTP/2 keeps rare); when
    /// they changed and make a valid configuration, it replaces the current
    /// one. A renewal caught half-written, or broken, keeps the last good
    /// configuration, and says so in the log.
    fn acceptor(&self) -> TlsAcceptor {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.files.read() {
            Ok(pem) if pem != current.0 => match acceptor(&pem) {
                Ok(acceptor) => {
                    tracing::info!(cert = %self.files.cert.display(), "serving the renewed TLS certificate");
                    *current = (pem, acceptor);
                }
                Err(error) => {
                    tracing::warn!(%error, "the TLS files changed but are not usable; serving the previous ones");
                }
            },
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot read the TLS files; serving the previous ones"),
        }
        current.1.clone()
    }
}

#[derive(Debug)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// The files' contents.
#[derive(PartialEq, Eq)]
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(&self) -> Result<Pem, ServeError> {
        Ok(Pem {
            cert: read(&self.cert)?,
            key: read(&self.key)?,
            client_ca: self.client_ca.as_deref().map(read).transpose()?,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|source| ServeError::TlsFile { path: path.to_owned(), source })
}

/// A TLS configuration from PEM: the chain and key, the client CA if any,
/// HTTP/2 by ALPN (gRPC's only protocol).
fn acceptor(pem: &Pem) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| not_pem("certificate file", &error))?;
    if chain.is_empty() {
        return Err("the certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&pem.key)
        .map_err(|error| format!("the key file holds no private key: {error}"))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let builder = match &pem.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(ca) {
                let certificate = certificate.map_err(|error| not_pem("client CA file", &error))?;
                roots.add(certificate).map_err(|error| format!("the client CA file: {error}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| format!("the client CA file: {error}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| format!("the key does not go with the certificate: {error}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn not_pem(file: &str, error: &pem::Error) -> String {
    let reason = match error {
        // Its own text lists the missing marker as bytes.
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".to_owned(),
        pem::Error::NoItemsFound => "it holds no PEM section of the expected kind".to_owned(),
        other => other.to_string(),
    };
    format!("the {file} is not PEM: {reason}")
}

/// The established connections of a gRPC port, for tonic's
/// `serve_with_incoming*`. Stops accepting (and frees the port) when
/// dropped, which tonic does when the server stops.
pub struct Incoming {
    connections: mpsc::Receiver<Connection>,
    _accepting: AbortOnDrop,
}

impl Stream for Incoming {
    type Item = Result<Connection, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.connections.poll_recv(cx).map(|connection| connection.map(Ok))
    }
}

/// Accepts connections on `listener`: TLS ones, each handshake in a task of
/// its own, when `certificates` is set; plaintext otherwise.
pub fn incoming(listener: TcpListener, certificates: Option<Arc<Certificates>>) -> Incoming {
    let (established, connections) = mpsc::channel(64);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let accepting = tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of file descriptors, typically: try again soon,
                    // without spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(certificates) = &certificates else {
                if established.send(Connection::Plain(tcp)).await.is_err() {
                    return;
                }
                continue;
            };
            // At most so many handshakes at once: a flood of connections
            // that never finish theirs waits here, not in memory.
            let Ok(slot) = Arc::clone(&handshakes).acquire_owned().await else { return };
            let certificates = Arc::clone(certificates);
            let established = established.clone();
            tokio::spawn(async move {
                let _slot = slot;
                // Reads the files: off the accept loop.
                let acceptor = certificates.acceptor();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = established.send(Connection::Tls(Box::new(tls))).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    Incoming { connections, _accepting: AbortOnDrop::new(accepting) }
}

/// One connection of a gRPC port.
pub enum Connection {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Self::Plain(tcp) => tcp.connect_info(),
            Self::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(tcp) => tcp.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}
