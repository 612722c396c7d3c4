//! A real Prometheus server and a real Alertmanager (Debian's `prometheus`
//! and `prometheus-alertmanager`, installed by `scripts/setup.sh test`),
//! each on a free loopback port with its own data directory, and the
//! webhook receiver the Alertmanager notifies: what the operations
//! rehearsal runs the shipped rules and dashboards against.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
};

use crate::{eventually, free_port};

/// `name`, or the binary `variable` names: a clear failure when missing.
fn binary(variable: &str, name: &str) -> PathBuf {
    let binary = std::env::var_os(variable).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(name));
    let found = std::process::Command::new(&binary).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "{} is not installed: run scripts/setup.sh test (or set {variable})", binary.display());
    binary
}

/// Starts `command` (Prometheus or Alertmanager, which share these flags)
/// listening on `addr`, and waits until it reports ready.
async fn start_ready(mut command: Command, addr: SocketAddr) -> Child {
    let child = command
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {:?}: {e}", command.as_std().get_program()));
    eventually(Duration::from_secs(30), &format!("{:?} to be ready", command.as_std().get_program()), || async move {
        get(addr, "/-/ready").await.is_some_and(|(status, _)| status == 200)
    })
    .await;
    child
}

/// A Prometheus server; killed when dropped.
pub struct Prometheus {
    _child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` (a prometheus.yml) and waits until
    /// it is ready.
    pub async fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(binary("PROMETHEUS_BIN", "prometheus"));
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()));
        Self { _child: start_ready(command, addr).await, addr, _dir: dir }
    }

    /// `http://127.0.0.1:<port>`, for a browser.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `data.result` of an instant query at the current time.
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", encode(promql))).await
    }

    /// The `data.result` of a range query over the last `range`, one step
    /// per `step`.
    pub async fn query_range(&self, promql: &str, range: Duration, step: Duration) -> Vec<Value> {
        let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let start = end.saturating_sub(range);
        self.api(&format!(
            "/api/v1/query_range?query={}&start={:.3}&end={:.3}&step={}",
            encode(promql),
            start.as_secs_f64(),
            end.as_secs_f64(),
            step.as_secs_f64()
        ))
        .await
    }

    /// The value of an instant query that has exactly one series, if it has.
    pub async fn scalar(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        match result.as_slice() {
            [one] => one["value"][1].as_str().and_then(|v| v.parse().ok()),
            _ => None,
        }
    }

    async fn api(&self, path: &str) -> Vec<Value> {
        let (status, body) = get(self.addr, path).await.unwrap_or_else(|| panic!("Prometheus did not answer {path}"));
        let answer: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e})"));
        assert_eq!(status, 200, "{path}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// An Alertmanager that sends every notification, firing and resolved, to
/// `webhook` at once (no grouping delay); killed when dropped.
pub struct Alertmanager {
    _child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    pub async fn start(webhook: &Webhook) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config_file = dir.path().join("alertmanager.yml");
        let config = format!(
            "route:\n  receiver: rehearsal\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  \
             repeat_interval: 1h\nreceivers:\n  - name: rehearsal\n    webhook_configs:\n      - url: {}\n        \
             send_resolved: true\n",
            webhook.url()
        );
        std::fs::write(&config_file, config).expect("write alertmanager.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut command = Command::new(binary("ALERTMANAGER_BIN", "prometheus-alertmanager"));
        command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            // No gossip: a lone instance, and no fixed port 9094 to collide on.
            .arg("--cluster.listen-address=");
        Self { _child: start_ready(command, addr).await, addr, _dir: dir }
    }

    /// `host:port`, for Prometheus's `alerting` section.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

/// One alert as the Alertmanager's webhook delivered it.
#[derive(Debug, Clone)]
pub struct Notification {
    pub alertname: String,
    /// `firing` or `resolved`.
    pub status: String,
    pub labels: Value,
    pub received: Instant,
}

/// Receives the Alertmanager's webhook notifications.
pub struct Webhook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Notification>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Webhook {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the webhook");
        let addr = listener.local_addr().expect("the webhook's address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = Arc::clone(&sink);
                tokio::spawn(async move {
                    if let Some(body) = read_request(stream).await {
                        record(&sink, &body);
                    }
                });
            }
        });
        Self { addr, received, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Every notification so far, in order of arrival.
    pub fn received(&self) -> Vec<Notification> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits until an alert `alertname` with `status` arrives after
    /// `since`; returns when it arrived.
    pub async fn wait_for(&self, alertname: &str, status: &str, since: Instant, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            let found = self
                .received()
                .into_iter()
                .find(|n| n.alertname == alertname && n.status == status && n.received >= since);
            if let Some(notification) = found {
                return notification.received;
            }
            assert!(
                Instant::now() < deadline,
                "no {status} {alertname} reached the webhook within {within:?}; received: {:?}",
                self.received().iter().map(|n| (&n.alertname, &n.status)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn record(sink: &Mutex<Vec<Notification>>, body: &[u8]) {
    let Ok(message) = serde_json::from_slice::<Value>(body) else { return };
    let now = Instant::now();
    let alerts = message["alerts"].as_array().cloned().unwrap_or_default();
    if let Ok(mut received) = sink.lock() {
        for alert in alerts {
            received.push(Notification {
                alertname: alert["labels"]["alertname"].as_str().unwrap_or_default().to_owned(),
                status: alert["status"].as_str().unwrap_or_default().to_owned(),
                labels: alert["labels"].clone(),
                received: now,
            });
        }
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body, answers 200
/// and closes; returns the body.
async fn read_request(mut stream: TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_end, length) = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (end + 4, length);
        }
    };
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.ok()?;
    Some(buffer[head_end..head_end + length].to_vec())
}

/// `GET path` over HTTP/1.0 (so the answer is neither chunked nor kept
/// alive): the status and the body, or `None` if nothing answered.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await.ok()?.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await.ok()?.ok()?;
    let end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = String::from_utf8_lossy(&response[..end]).split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response[end + 4..].to_vec()))
}

fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
