//! A JetStream cluster on loopback, with the production overlay's settings
//! (`sync_interval: always`, no advertised client URLs: clients know only
//! the servers they were given), for tests of the event log across server
//! failures: kill a server, freeze one (SIGSTOP), find the stream leader.

use std::{path::PathBuf, time::Duration};

use tokio::process::{Child, Command};

use crate::{eventually, free_port, spawn_nats_server};

/// One server of a [`NatsCluster`].
struct Node {
    name: String,
    port: u16,
    /// The monitoring endpoint's port (`/connz`).
    monitor: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// A cluster of nats-server processes (the pinned release), each with its
/// own store; killed when dropped.
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` servers and waits until JetStream answers on each.
    pub async fn start(size: usize) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let route_urls: Vec<String> = routes.iter().map(|port| format!("nats://127.0.0.1:{port}")).collect();
        let mut nodes = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let name = format!("n{index}");
            let (port, monitor) = (free_port(), free_port());
            let store = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
                     cluster {{ name: test, listen: 127.0.0.1:{route}, no_advertise: true, routes: [{}] }}\n",
                    store.display(),
                    route_urls.join(", ")
                ),
            )
            .expect("write the server config");
            nodes.push(Node { name, port, monitor, config, child: None });
        }
        let mut cluster = Self { nodes, _dir: dir };
        for index in 0..size {
            cluster.spawn(index).await;
        }
        // JetStream is ready once the meta group has a leader: account info
        // answers only then.
        for node in &cluster.nodes {
            let url = format!("nats://127.0.0.1:{}", node.port);
            eventually(Duration::from_secs(30), "the JetStream cluster to elect its meta leader", || {
                let url = url.clone();
                async move {
                    let Ok(client) = async_nats::connect(url).await else { return false };
                    async_nats::jetstream::new(client).query_account().await.is_ok()
                }
            })
            .await;
        }
        cluster
    }

    /// Every server's URL, comma-separated (what `NATS_URL` takes).
    pub fn url(&self) -> String {
        self.nodes.iter().map(|node| format!("nats://127.0.0.1:{}", node.port)).collect::<Vec<_>>().join(",")
    }

    /// The server names, `n0` …
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.name.clone()).collect()
    }

    /// The server that leads `stream`, asked of any running server.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        let client = async_nats::connect(self.url().split(',').map(str::to_owned).collect::<Vec<_>>()).await.ok()?;
        let mut stream = async_nats::jetstream::new(client).get_stream(stream).await.ok()?;
        stream.info().await.ok()?.cluster.as_ref()?.leader.clone()
    }

    /// The running servers that a client named `client` (its CONNECT name)
    /// is connected to, from each server's `/connz`.
    pub async fn servers_with_client(&self, client: &str) -> Vec<String> {
        let mut found = Vec::new();
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.monitor));
            let Some((200, body)) = crate::prometheus::get(addr, "/connz").await else { continue };
            let connz: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let connections = connz["connections"].as_array().cloned().unwrap_or_default();
            if connections.iter().any(|connection| connection["name"] == client) {
                found.push(node.name.clone());
            }
        }
        found
    }

    /// SIGKILLs server `name` and waits for it to exit.
    pub async fn kill(&mut self, name: &str) {
        if let Some(mut child) = self.node_mut(name).child.take() {
            child.kill().await.expect("kill nats-server");
        }
    }

    /// Starts server `name` again, with its store.
    pub async fn restart(&mut self, name: &str) {
        self.kill(name).await;
        let index = self.nodes.iter().position(|node| node.name == name).expect("a server of this cluster");
        self.spawn(index).await;
    }

    /// Freezes server `name` (SIGSTOP): its sockets stay open, nothing
    /// answers; what a hung host or a long GC pause looks like to clients.
    pub async fn freeze(&self, name: &str) {
        self.signal(name, "-STOP").await;
    }

    /// Resumes a frozen server (SIGCONT).
    pub async fn thaw(&self, name: &str) {
        self.signal(name, "-CONT").await;
    }

    async fn signal(&self, name: &str, signal: &str) {
        let node = self.nodes.iter().find(|node| node.name == name).expect("a server of this cluster");
        let pid = node.child.as_ref().and_then(Child::id).expect("a running server").to_string();
        let status = Command::new("kill").args([signal, &pid]).status().await.expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|node| node.name == name).expect("a server of this cluster")
    }

    async fn spawn(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        node.child = Some(spawn_nats_server(&["-c".into(), node.config.clone().into()], node.port).await);
    }
}
