//! The operations rehearsal: the three service binaries under a steady mixed
//! load, scraped by a real Prometheus that loads the shipped rule files
//! unchanged and notifies a real Alertmanager, whose webhook this test
//! reads. Each scenario an operator meets is played and asserted as the
//! operator would see it: on the dashboards' queries, in the alerts that
//! reach the Alertmanager, and in how long they take to fire and resolve.
//!
//! `scripts/rehearsal.sh` runs it at full size (a rebuild of 100,000
//! events, release build), prints the timeline and saves charts of each
//! side, drawn from Prometheus's query API, for docs/telemetry.md.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::HeaderMap;
use shared::{event_log::EventLogArgs, proto::bank::v1 as pb};
use testkit::{
    NatsServer, free_port,
    prometheus::{Alertmanager, Prometheus, Webhook},
};
use tokio::process::Child;
use tonic_health::pb::health_check_response::ServingStatus;
use yaml_rust2::YamlLoader;

use crate::{
    helpers::*,
    promql::shipped_dashboard_queries,
    telemetry::{service_command, stop},
};

/// The blog post's three queries, verbatim.
const BLOG_QUERIES: [&str; 3] = [
    "histogram_quantile(0.95, sum(rate(cqrs_query_duration_bucket[5m])) by (le, query_type))",
    "histogram_quantile(0.99, sum(rate(cqrs_projection_lag_bucket[5m])) by (le, projection_name))",
    "sum(rate(cqrs_command_total[1m])) by (command_type)",
];

/// Dashboard queries that only have data while a rebuild runs.
const REBUILD_ONLY: &str = "cqrs_projection_replay";

const ACCOUNTS: usize = 20;

/// The size of the run: `REHEARSAL_EVENTS` events in the log before the
/// rebuild (small by default, for the test suite).
fn history_events() -> u64 {
    std::env::var("REHEARSAL_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

/// What happened when, printed at the end.
struct Timeline {
    start: Instant,
    rows: Vec<String>,
    /// When each scenario began (seconds since the start), for the charts.
    marks: Vec<(f64, &'static str)>,
}

impl Timeline {
    fn new() -> Self {
        Self { start: Instant::now(), rows: Vec::new(), marks: Vec::new() }
    }

    fn begin(&mut self, scenario: &'static str) {
        self.marks.push((self.start.elapsed().as_secs_f64(), scenario));
    }

    fn note(&mut self, scenario: &str, what: String) {
        let row = format!("{:>7.1}s  {scenario:<22} {what}", self.start.elapsed().as_secs_f64());
        eprintln!("rehearsal: {row}");
        self.rows.push(row);
    }
}

/// A service binary and the ports it answers on.
struct Service {
    name: &'static str,
    grpc: SocketAddr,
    metrics: u16,
    child: Option<Child>,
}

impl Service {
    fn new(name: &'static str) -> Self {
        Self { name, grpc: SocketAddr::from(([127, 0, 0, 1], free_port())), metrics: free_port(), child: None }
    }

    async fn start(&mut self, env: &[(&str, String)]) {
        let mut env = env.to_vec();
        env.push(("OTEL_EXPORTER_PROMETHEUS_PORT", self.metrics.to_string()));
        self.child = Some(service_command(self.name, self.grpc, &env).spawn().unwrap());
        wait_for_health(self.grpc, ServingStatus::Serving).await;
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

/// The job names of the shipped prometheus.yml: the rehearsal's Prometheus
/// scrapes under the same names, since the rules and dashboards use them.
fn shipped_jobs() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/base/observability/prometheus/prometheus.yml");
    let config = &YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap()[0];
    config["scrape_configs"].as_vec().unwrap().iter().map(|job| job["job_name"].as_str().unwrap().to_owned()).collect()
}

fn prometheus_config(targets: &[(&str, u16)], alertmanager: &Alertmanager) -> String {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/k8s/base/observability/prometheus/rules/*.rules.yaml")
        .display()
        .to_string();
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files: ['{rules}']\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{}']\n\
         scrape_configs:\n",
        alertmanager.target()
    );
    for (job, port) in targets {
        config.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"));
    }
    config
}

/// A steady mixed load until `stop`: deposits (and refused withdrawals)
/// on `ACCOUNTS` accounts, and the three queries, read-your-writes, plus
/// one for an account that does not exist. Failures (a side is down) are
/// expected in some scenarios and only counted.
fn steady_load(write: SocketAddr, read: SocketAddr, stop: Arc<AtomicBool>, ok: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let mut commands = pb::account_command_service_client::AccountCommandServiceClient::new(channel(write));
        let mut queries = pb::account_query_service_client::AccountQueryServiceClient::new(channel(read));
        let mut position = 0;
        for round in 0usize.. {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let account_id = format!("live-{}", round % ACCOUNTS);
            let deposit = pb::DepositFundsRequest { account_id: account_id.clone(), amount: 5, ..Default::default() };
            if let Ok(reply) = commands.deposit_funds(deposit).await {
                position = reply.into_inner().position;
                ok.fetch_add(1, Ordering::Relaxed);
            }
            if round % 5 == 0 {
                let withdraw = pb::WithdrawFundsRequest {
                    account_id: account_id.clone(),
                    amount: 1_000_000_000,
                    ..Default::default()
                };
                let _ = commands.withdraw_funds(withdraw).await;
            }
            let _ = queries
                .get_account(pb::GetAccountRequest { account_id: account_id.clone(), min_position: position })
                .await;
            match round % 4 {
                0 => {
                    let list = pb::ListAccountsRequest { page_size: 10, ..Default::default() };
                    let _ = queries.list_accounts(list).await;
                }
                1 => {
                    let history = pb::GetAccountHistoryRequest { account_id, page_size: 5, ..Default::default() };
                    let _ = queries.get_account_history(history).await;
                }
                2 => {
                    let nobody = pb::GetAccountRequest { account_id: "nobody".into(), min_position: 0 };
                    let _ = queries.get_account(nobody).await;
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_rehearsal_on_a_real_prometheus_and_alertmanager() {
    let mut timeline = Timeline::new();
    let screenshots = std::env::var_os("REHEARSAL_SCREENSHOTS").map(PathBuf::from);

    // --- The system, with a history to rebuild later.
    let nats = NatsServer::start().await;
    let store = Store::sqlite();
    let env = vec![
        ("NATS_URL", nats.url()),
        ("READ_STORE_URL", store.url()),
        ("OTEL_METRICS_EXPORTER", "prometheus".to_owned()),
        ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1".to_owned()),
        // No trace collector here: traces are another test's business.
        ("OTEL_TRACES_SAMPLER", "always_off".to_owned()),
        ("RUST_LOG", "error".to_owned()),
    ];
    let mut write = Service::new("write-service");
    let mut projector = Service::new("projector");
    let mut read = Service::new("read-service");
    let rebuild_metrics = free_port();
    write.start(&env).await;
    let names = EventLogArgs { stream: STREAM.into(), subject_prefix: PREFIX.into() };
    let events = history_events();
    let history_end = testkit::event_log::seed(&nats.url(), &names, "old-", 100, events.div_ceil(100)).await.unwrap();
    projector.start(&env).await;
    read.start(&env).await;
    let mut queries = pb::account_query_service_client::AccountQueryServiceClient::new(channel(read.grpc));
    let caught_up = pb::GetAccountRequest { account_id: "old-0".into(), min_position: history_end };
    testkit::eventually(Duration::from_secs(600), "the projector to apply the history", || {
        let mut queries = queries.clone();
        let request = caught_up.clone();
        async move { queries.get_account(request).await.is_ok() }
    })
    .await;
    timeline.note("start", format!("{history_end} events in the log, projected"));

    // --- Prometheus (the shipped rules, the shipped job names) and Alertmanager.
    let jobs = shipped_jobs();
    let targets = [
        ("write-service", write.metrics),
        ("read-service", read.metrics),
        ("projector", projector.metrics),
        ("projector-rebuild", rebuild_metrics),
    ];
    for (job, _) in &targets {
        assert!(jobs.contains(*job), "deploy's prometheus.yml has no job {job}: {jobs:?}");
    }
    let webhook = Webhook::start().await;
    let alertmanager = Alertmanager::start(&webhook).await;
    let prometheus = Prometheus::start(&prometheus_config(&targets, &alertmanager)).await;

    let stop_load = Arc::new(AtomicBool::new(false));
    let load_ok = Arc::new(AtomicU64::new(0));
    for id in 0..ACCOUNTS {
        let open = pb::OpenAccountRequest {
            account_id: format!("live-{id}"),
            owner: "Live".into(),
            command_id: String::new(),
        };
        pb::account_command_service_client::AccountCommandServiceClient::new(channel(write.grpc))
            .open_account(open)
            .await
            .unwrap();
    }
    steady_load(write.grpc, read.grpc, Arc::clone(&stop_load), Arc::clone(&load_ok));

    // --- A cancelled call: the client gives up on a query that waits for
    // a position the read model will not reach.
    let waiting = pb::GetAccountRequest { account_id: "live-0".into(), min_position: history_end * 1_000 };
    assert!(tokio::time::timeout(Duration::from_millis(300), queries.get_account(waiting)).await.is_err());

    // --- Steady state: every dashboard query and the blog's three have data.
    timeline.begin("steady");
    let steady = Instant::now();
    testkit::eventually(Duration::from_secs(60), "a minute's worth of rate() over steady load", || async {
        prometheus.scalar("sum(rate(cqrs_command_total[1m]))").await.is_some_and(|rate| rate > 0.0)
            && prometheus.scalar("count(cqrs_projection_lag_bucket)").await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut empty = Vec::new();
    for (file, query) in shipped_dashboard_queries() {
        if !query.contains(REBUILD_ONLY) && prometheus.query(&query).await.is_empty() {
            empty.push(format!("{file}: {query}"));
        }
    }
    for query in BLOG_QUERIES {
        if prometheus.query(query).await.is_empty() {
            empty.push(format!("the blog: {query}"));
        }
    }
    assert!(empty.is_empty(), "queries with no data under steady load:\n{}", empty.join("\n"));
    for cancelled in [
        "rpc_server_call_duration_seconds_count{cqrs_side=\"read\", rpc_response_status_code=\"CANCELLED\"}",
        "cqrs_query_total{query_status=\"error\", error_type=\"CANCELLED\"}",
        "cqrs_query_duration_count{query_status=\"error\", error_type=\"CANCELLED\"}",
    ] {
        assert_eq!(prometheus.scalar(&format!("sum({cancelled})")).await, Some(1.0), "{cancelled}");
    }
    timeline.note(
        "steady",
        format!(
            "every dashboard query and the blog's three have data ({:.0} s after load began)",
            steady.elapsed().as_secs_f64()
        ),
    );

    // --- A rebuild of the whole history while writes continue.
    timeline.begin("rebuild");
    let rebuild_started = Instant::now();
    let mut rebuild_env = env.clone();
    rebuild_env.push(("OTEL_EXPORTER_PROMETHEUS_PORT", rebuild_metrics.to_string()));
    let rebuild = projector_command(&nats.url(), &store.url())
        .env_remove("OTEL_SDK_DISABLED")
        .envs(rebuild_env.iter().map(|(k, v)| (*k, v.as_str())))
        .arg("rebuild")
        .output()
        .await
        .unwrap();
    assert!(rebuild.status.success(), "{}", String::from_utf8_lossy(&rebuild.stderr));
    let rebuild_took = rebuild_started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let window = timeline.start.elapsed();
    let replayed = max_over(&prometheus, "max(cqrs_projection_replay_position)", window).await;
    assert!(replayed > 0.0, "the rebuild ({rebuild_took:?}) was not visible as its own series");
    let firing = "ALERTS{alertname=\"CqrsProjectionLagP99High\", alertstate=\"firing\"}";
    let lag_alerts = prometheus.query_range(firing, window, Duration::from_secs(1)).await;
    assert!(lag_alerts.is_empty(), "the rebuild fired the lag alert: {lag_alerts:?}");
    // Honest lag: the rebuild reset the read model, so an event written
    // meanwhile waits until the replay reaches it, at most the rebuild's
    // duration; the history's own age (days) is not lag.
    let live_lag = max_over(&prometheus, "cqrs:projection_lag:p99_rate5m", window).await;
    let bound = rebuild_took.as_secs_f64() * 1_000.0 + 5_000.0;
    assert!(live_lag <= bound, "the live lag p99 reached {live_lag} ms during a rebuild of {rebuild_took:?}");
    // Nor is the rebuild a stall: replaying what was reset is progress.
    let staleness = max_over(&prometheus, "max(cqrs_projection_staleness)", window).await;
    assert!(staleness <= bound, "staleness reached {staleness} ms during a rebuild of {rebuild_took:?}");
    let mut empty = Vec::new();
    for (file, query) in shipped_dashboard_queries() {
        if prometheus.query_range(&query, window, Duration::from_secs(1)).await.is_empty() {
            empty.push(format!("{file}: {query}"));
        }
    }
    assert!(empty.is_empty(), "queries that never had data, a rebuild included:\n{}", empty.join("\n"));
    timeline.note(
        "rebuild",
        format!(
            "{history_end}+ events re-applied in {:.1} s under writes; no lag alert fired, live lag p99 at most {live_lag:.0} ms",
            rebuild_took.as_secs_f64()
        ),
    );

    // --- A dead letter: an event the projector cannot apply.
    timeline.begin("dead letter");
    let since = Instant::now();
    let jetstream = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("ce-type", "bank.v1.AccountFrozen"),
        ("ce-subject", "frozen"),
        ("ce-aggregateversion", "1"),
        ("ce-time", "2026-12-06T00:00:00Z"),
    ] {
        headers.insert(name, value);
    }
    jetstream
        .publish_with_headers(format!("{PREFIX}.account.frozen"), headers, "?".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let fired = webhook.wait_for("CqrsProjectionDeadLetters", "firing", since, Duration::from_secs(60)).await;
    timeline
        .note("dead letter", format!("CqrsProjectionDeadLetters fired after {:.1} s", (fired - since).as_secs_f64()));

    // --- The projector stalls (its read store locked by someone else) and,
    // meanwhile, the read side goes down.
    timeline.begin("stalled + read down");
    let since = Instant::now();
    let lock = StoreLock::take(&store).await;
    read.kill().await;
    let fired = webhook.wait_for("CqrsReadSideDown", "firing", since, Duration::from_secs(120)).await;
    timeline
        .note("read-service killed", format!("CqrsReadSideDown fired after {:.1} s", (fired - since).as_secs_f64()));
    timeline.begin("read back");
    let back = Instant::now();
    read.start(&env).await;
    let resolved = webhook.wait_for("CqrsReadSideDown", "resolved", back, Duration::from_secs(60)).await;
    timeline
        .note("read-service back", format!("CqrsReadSideDown resolved after {:.1} s", (resolved - back).as_secs_f64()));
    let staleness = prometheus.scalar("max(cqrs_projection_staleness)").await.unwrap_or_default();
    assert!(staleness > 30_000.0, "the projector is stalled, yet its staleness is {staleness} ms");
    let fired = webhook.wait_for("CqrsProjectionStalled", "firing", since, Duration::from_secs(300)).await;
    timeline
        .note("projector stalled", format!("CqrsProjectionStalled fired after {:.1} s", (fired - since).as_secs_f64()));
    timeline.begin("unstalled");
    let released = Instant::now();
    lock.release().await;
    let resolved = webhook.wait_for("CqrsProjectionStalled", "resolved", released, Duration::from_secs(60)).await;
    testkit::eventually(Duration::from_secs(30), "staleness back to 0", || async {
        prometheus.scalar("max(cqrs_projection_staleness)").await == Some(0.0)
    })
    .await;
    timeline.note(
        "projector unstalled",
        format!(
            "CqrsProjectionStalled resolved after {:.1} s; staleness back to 0",
            (resolved - released).as_secs_f64()
        ),
    );

    // --- The projector and the write-service killed.
    timeline.begin("projector+write down");
    let since = Instant::now();
    projector.kill().await;
    write.kill().await;
    for alert in ["CqrsProjectorDown", "CqrsWriteSideDown"] {
        let fired = webhook.wait_for(alert, "firing", since, Duration::from_secs(120)).await;
        timeline.note("projector+write killed", format!("{alert} fired after {:.1} s", (fired - since).as_secs_f64()));
    }
    timeline.begin("back");
    let back = Instant::now();
    write.start(&env).await;
    projector.start(&env).await;
    for alert in ["CqrsProjectorDown", "CqrsWriteSideDown"] {
        let resolved = webhook.wait_for(alert, "resolved", back, Duration::from_secs(60)).await;
        timeline
            .note("projector+write back", format!("{alert} resolved after {:.1} s", (resolved - back).as_secs_f64()));
    }

    stop_load.store(true, Ordering::Relaxed);
    assert!(load_ok.load(Ordering::Relaxed) > 0);
    // No alert fired that the scenarios did not cause.
    let expected = [
        "CqrsProjectionDeadLetters",
        "CqrsReadSideDown",
        "CqrsProjectionStalled",
        "CqrsProjectorDown",
        "CqrsWriteSideDown",
    ];
    let unexpected: BTreeSet<String> =
        webhook.received().into_iter().map(|n| n.alertname).filter(|name| !expected.contains(&name.as_str())).collect();
    assert!(unexpected.is_empty(), "alerts no scenario caused: {unexpected:?}");
    eprintln!("rehearsal timeline:\n{}", timeline.rows.join("\n"));
    if let Some(dir) = &screenshots {
        charts(&prometheus, dir, &timeline).await;
    }
    stop(read.child.take().unwrap()).await;
}

/// The highest value `promql` took over the last `window` (0 if none).
async fn max_over(prometheus: &Prometheus, promql: &str, window: Duration) -> f64 {
    prometheus
        .query_range(promql, window, Duration::from_secs(1))
        .await
        .iter()
        .flat_map(|series| series["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|point| point[1].as_str().and_then(|v| v.parse::<f64>().ok()))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}

/// The graphs of each side over the whole rehearsal, drawn from
/// Prometheus's query API with the scenarios marked, saved as
/// `<side>.png` in `dir` (an SVG page screenshotted by headless Chromium).
async fn charts(prometheus: &Prometheus, dir: &Path, timeline: &Timeline) {
    let sides: [(&str, &[(&str, &str)]); 3] = [
        (
            "write",
            &[
                ("commands/s by type", "sum by (command_type) (rate(cqrs_command_total[10s]))"),
                (
                    "command latency p99 (ms)",
                    "histogram_quantile(0.99, sum by (le) (rate(cqrs_command_duration_bucket[10s])))",
                ),
                ("up", "max by (job) (up{job=\"write-service\"})"),
            ],
        ),
        (
            "read",
            &[
                ("queries/s by type", "sum by (query_type) (rate(cqrs_query_total[10s]))"),
                (
                    "query latency p95 (ms) by type",
                    "histogram_quantile(0.95, sum by (le, query_type) (rate(cqrs_query_duration_bucket[10s])))",
                ),
                ("up", "max by (job) (up{job=\"read-service\"})"),
            ],
        ),
        (
            "projection",
            &[
                ("staleness (ms)", "max(cqrs_projection_staleness)"),
                (
                    "lag p99 (ms) by projection",
                    "histogram_quantile(0.99, sum by (le, projection_name) (rate(cqrs_projection_lag_bucket[10s])))",
                ),
                ("rebuild: events/s re-applied", "sum by (projection_name) (rate(cqrs_projection_replayed_total[5s]))"),
                ("projector up", "max by (job) (up{job=\"projector\"})"),
            ],
        ),
    ];
    // From a little before the first scenario (when Prometheus had begun).
    let begin = timeline.marks.first().map_or(0.0, |(at, _)| (at - 10.0).max(0.0));
    let range = timeline.start.elapsed().saturating_sub(Duration::from_secs_f64(begin));
    let end = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let start = end - range.as_secs_f64();
    let marks: Vec<(f64, &str)> = timeline.marks.iter().map(|(at, name)| (at - begin, *name)).collect();
    for (side, panels) in sides {
        let mut page = String::from(
            "<html><body style=\"margin:0;background:#fff;font:13px sans-serif\"><svg xmlns=\"http://www.w3.org/2000/svg\" \
             width=\"1100\" height=\"HEIGHT\">",
        );
        let mut top = 10.0;
        for (title, expr) in panels.iter() {
            let series = prometheus.query_range(expr, range, Duration::from_secs(2)).await;
            page.push_str(&panel_svg(title, &series, start, end, top, &marks));
            top += 190.0;
        }
        page.push_str("</svg></body></html>");
        let page = page.replace("HEIGHT", &format!("{top}"));
        let html = dir.join(format!("{side}.html"));
        std::fs::write(&html, page).unwrap();
        chromium_screenshot(&format!("file://{}", html.display()), &dir.join(format!("{side}.png")), top as u32).await;
        std::fs::remove_file(html).unwrap();
    }
}

/// One chart: `series` (a range query's result) from `start` to `end`
/// (Unix seconds), drawn at `top`, with a dashed line per scenario mark.
fn panel_svg(
    title: &str,
    series: &[serde_json::Value],
    start: f64,
    end: f64,
    top: f64,
    marks: &[(f64, &str)],
) -> String {
    const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
    let (left, width, height) = (60.0, 1020.0, 130.0);
    let points: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            let labels =
                s["metric"].as_object().map(|m| m.values().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(" "));
            let values = s["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse::<f64>().ok()?)))
                .collect();
            (labels.unwrap_or_default(), values)
        })
        .collect();
    let max = points.iter().flat_map(|(_, v)| v.iter().map(|(_, y)| *y)).filter(|y| y.is_finite()).fold(0.0, f64::max);
    let max = if max > 0.0 { max * 1.1 } else { 1.0 };
    let x = |t: f64| left + (t - start) / (end - start) * width;
    let y = |v: f64| top + 20.0 + height - v / max * height;
    let mut svg = format!("<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{title}</text>", top + 12.0);
    let decimals = if max < 10.0 { 1 } else { 0 };
    for step in 0..=4 {
        let value = max * f64::from(step) / 4.0;
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" \
             text-anchor=\"end\" font-size=\"11\">{value:.decimals$}</text>",
            left + width,
            left - 4.0,
            y(value) + 4.0,
            y0 = y(value)
        ));
    }
    for (number, (at, name)) in marks.iter().enumerate() {
        let mark = x(start + at);
        // Alternate rows, so that close marks do not overwrite each other.
        let row = if number % 2 == 0 { 30.0 } else { 42.0 };
        svg.push_str(&format!(
            "<line x1=\"{mark}\" x2=\"{mark}\" y1=\"{}\" y2=\"{}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"#666\">{name}</text>",
            top + 16.0,
            top + 20.0 + height,
            mark + 2.0,
            top + row
        ));
    }
    for (index, (label, values)) in points.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        // A gap in the data (no sample for more than 5 s) breaks the line.
        let mut path = String::new();
        let mut previous: Option<f64> = None;
        for (t, v) in values.iter().filter(|(_, v)| v.is_finite()) {
            let command = if previous.is_some_and(|p| t - p <= 5.0) { 'L' } else { 'M' };
            path.push_str(&format!("{command}{:.1},{:.1} ", x(*t), y(*v)));
            previous = Some(*t);
        }
        svg.push_str(&format!("<path d=\"{path}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"/>"));
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{color}\">{label}</text>",
            left + 10.0 + 170.0 * index as f64,
            top + 20.0 + height + 16.0
        ));
    }
    svg
}

/// `url` as a PNG at `file`, 1100 pixels wide and `height` high.
async fn chromium_screenshot(url: &str, file: &Path, height: u32) {
    let status = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--disable-background-networking",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--window-size=1100,{height}"))
        .arg(format!("--screenshot={}", file.display()))
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "chromium could not screenshot {url}");
}
