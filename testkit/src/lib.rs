//! Test support: a private `nats-server` with JetStream per test, on a free
//! port with its own store, that a test can kill (SIGKILL) and restart on
//! the same port and store; a real OTLP receiver ([`otlp`]); and helpers to
//! wait for effects with a deadline instead of sleeping; a throwaway PKI
//! for TLS tests ([`tls`]); a private PostgreSQL that a test can crash
//! ([`postgres`]); a fast seeder of realistic event logs ([`event_log`]).
//!
//! The binary is `$NATS_SERVER_BIN`, else `scripts/nats-server` (the
//! pinned release the images use, installed by `scripts/setup.sh`); it must
//! be 2.11 or later, like the services need.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: fail loudly

pub mod cluster;
pub mod event_log;
pub mod otlp;
pub mod postgres;
pub mod prometheus;
pub mod tls;

use std::{
    future::Future,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    sync::OnceLock,
    time::{Duration, Instant},
};

use tokio::process::{Child, Command};

/// A nats-server process owned by a test; killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    /// Extra configuration (a config file in the store folder), if any.
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts a JetStream-enabled server on a free port and waits until it
    /// accepts connections.
    pub async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    /// Starts a server on `port` (e.g. one a service was already told to use).
    pub async fn start_on(port: u16) -> Self {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let mut server = Self { child: None, port, store, config: None };
        server.spawn().await;
        server
    }

    /// Starts a server on a free port with `config` (nats-server config
    /// syntax: accounts, users, permissions, TLS...) on top of the usual
    /// listen address and JetStream store.
    pub async fn start_with_config(config: &str) -> Self {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let path = store.path().join("nats.conf");
        std::fs::write(&path, config).expect("write the nats-server config");
        let mut server = Self { child: None, port: free_port(), store, config: Some(path) };
        server.spawn().await;
        server
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL (no clean shutdown) and waits for it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill nats-server");
        }
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if let Some(config) = &self.config {
            args.extend(["-c".into(), config.into()]);
        }
        args.extend(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"].map(Into::into));
        args.push(self.store.path().into());
        self.child = Some(spawn_nats_server(&args, self.port).await);
    }
}

/// Starts the nats-server binary with `args` and waits until it accepts
/// connections on `port`; killed when the child is dropped.
pub(crate) async fn spawn_nats_server(args: &[std::ffi::OsString], port: u16) -> Child {
    let child = Command::new(binary())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e} (install nats-server)", binary().display()));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    eventually(Duration::from_secs(10), "nats-server to accept connections", || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    child
}

/// The nats-server binary, checked once to be a release the services can
/// run on.
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let binary = std::env::var_os("NATS_SERVER_BIN").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/nats-server"))
            });
            let output = std::process::Command::new(&binary)
                .arg("--version")
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e} (run scripts/setup.sh)", binary.display()));
            // "nats-server: v2.15.1"
            let version = String::from_utf8_lossy(&output.stdout);
            let version = version.trim().rsplit('v').next().unwrap_or_default().to_owned();
            let mut parts = version.split('.').map(|part| part.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            assert!(
                output.status.success() && (major, minor) >= (2, 11),
                "{} is nats-server {version:?}; the tests need 2.11 or later (run scripts/setup.sh, or set NATS_SERVER_BIN)",
                binary.display()
            );
            binary
        })
        .clone()
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Like [`eventually`], for a value: polls `produce` until it returns
/// `Some`, and returns it.
pub async fn eventually_some<T, F, Fut>(within: Duration, what: &str, mut produce: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = produce().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after
/// `within`. For effects that have no event to wait on.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
