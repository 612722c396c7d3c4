//! `cqrs-top`: the three sides of the system live in a terminal, side by
//! side, refreshed every second: commands/s, latency and errors on the
//! write side, queries/s and latency on the read side, lag, staleness,
//! pending events, dead letters and a running rebuild on the projection
//! side. It reads nothing but each service's own `/metrics` (what
//! `OTEL_METRICS_EXPORTER=prometheus` serves; `scripts/run-local.sh`
//! turns it on), so it needs no collector, Prometheus or Grafana, and it
//! works against any deployment whose metrics ports it can reach (e.g.
//! through `kubectl port-forward`). A side it cannot scrape is shown as
//! unreachable, with for how long.

use std::{
    collections::VecDeque,
    io::Write,
    time::{Duration, Instant},
};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod metrics;
mod view;

use metrics::Sample;

/// Shows the write, read and projection sides live, from their /metrics.
#[derive(Debug, Parser)]
#[command(name = "cqrs-top", version, about)]
struct Args {
    /// The write-service's metrics endpoint (host:port).
    #[arg(long, env = "CQRS_TOP_WRITE", default_value = "127.0.0.1:9464")]
    write: String,
    /// The read-service's metrics endpoint.
    #[arg(long, env = "CQRS_TOP_READ", default_value = "127.0.0.1:9465")]
    read: String,
    /// The projector's metrics endpoint.
    #[arg(long, env = "CQRS_TOP_PROJECTOR", default_value = "127.0.0.1:9466")]
    projector: String,
    /// How often to refresh.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Rates and quantiles cover this much of the recent past.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    window: Duration,
}

/// One side's scrapes and reachability.
pub(crate) struct Side {
    pub(crate) name: &'static str,
    endpoint: String,
    scrapes: VecDeque<(Instant, Vec<Sample>)>,
    /// Since when the side has not answered, if it has not.
    pub(crate) unreachable_since: Option<Instant>,
    pub(crate) error: String,
}

impl Side {
    fn new(name: &'static str, endpoint: String) -> Self {
        Self { name, endpoint, scrapes: VecDeque::new(), unreachable_since: None, error: String::new() }
    }

    async fn scrape(&mut self, keep: Duration) {
        let now = Instant::now();
        match tokio::time::timeout(Duration::from_millis(800), fetch(&self.endpoint)).await {
            Ok(Ok(text)) => {
                self.unreachable_since = None;
                self.scrapes.push_back((now, metrics::parse(&text)));
                while self.scrapes.len() > 2 && self.scrapes.get(1).is_some_and(|(at, _)| now - *at >= keep) {
                    self.scrapes.pop_front();
                }
            }
            Ok(Err(error)) => self.unreachable(now, error.to_string()),
            Err(_) => self.unreachable(now, "no answer within 800 ms".to_owned()),
        }
    }

    fn unreachable(&mut self, now: Instant, error: String) {
        self.unreachable_since.get_or_insert(now);
        self.error = error;
        // Old numbers would look live: forget them.
        self.scrapes.clear();
    }

    /// The oldest and newest scrapes kept, once there are two.
    pub(crate) fn window(&self) -> Option<metrics::Window<'_>> {
        let (first, last) = (self.scrapes.front()?, self.scrapes.back()?);
        (self.scrapes.len() >= 2).then(|| metrics::Window {
            before: &first.1,
            now: &last.1,
            seconds: (last.0 - first.0).as_secs_f64(),
        })
    }
}

/// `GET /metrics` over plain HTTP/1.0: the body.
async fn fetch(endpoint: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(endpoint).await?;
    stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let status = head.lines().next().unwrap_or_default().to_owned();
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, status));
    }
    Ok(body.to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let mut sides =
        [Side::new("write", args.write), Side::new("read", args.read), Side::new("projection", args.projector)];
    let mut tick = tokio::time::interval(args.every);
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        for side in &mut sides {
            side.scrape(args.window).await;
        }
        let width = terminal_width();
        let screen = view::render(&sides, width, Instant::now());
        // Clear and redraw from the top left.
        let _ = write!(stdout, "\x1b[H\x1b[2J{screen}");
        let _ = stdout.flush();
    }
}

/// The terminal's width in columns (`COLUMNS`, or 150).
fn terminal_width() -> usize {
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).unwrap_or(150)
}
