//! The PromQL that ships in deploy/ (Grafana dashboards, Prometheus rules)
//! against the metrics the services really export: every expression must
//! parse, and every metric and label it selects must exist under the name
//! the OpenTelemetry Collector's Prometheus exporter gives it. A renamed
//! metric or attribute fails here, not on a dashboard in production.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use opentelemetry_proto::tonic::metrics::v1::{Metric, metric::Data};
use promql_parser::{
    label::Matchers,
    parser::{self, Expr, LabelModifier, VectorSelector},
    util::{ExprVisitor, walk_expr},
};
use yaml_rust2::{Yaml, YamlLoader};

/// Series the running services do not export, so this check cannot see
/// them: Prometheus's own `up`, and what only `projector rebuild` exports.
/// The operations rehearsal (rehearsal.rs) has a real Prometheus answer
/// every dashboard query, these included.
const NOT_FROM_THE_LIVE_SERVICES: [&str; 4] =
    ["up", "cqrs_projection_replayed_total", "cqrs_projection_replay_position", "cqrs_projection_replay_target"];

/// Labels Prometheus and the exporter add to every series.
const SERIES_LABELS: [&str; 3] = ["job", "instance", "__name__"];

/// The Prometheus series names of an OTLP metric, by the OTel → Prometheus
/// rules (prometheus/otlptranslator, with suffixes): invalid characters
/// become `_`, the unit is appended in words (annotations like `{row}` are
/// dropped), monotonic sums end in `_total`, histograms are exposed as
/// `_bucket`, `_sum` and `_count`.
pub(crate) fn prometheus_series(metric: &Metric) -> Vec<String> {
    let mut name: String =
        metric.name.chars().map(|c| if c.is_ascii_alphanumeric() || c == ':' { c } else { '_' }).collect();
    let unit = match metric.unit.as_str() {
        "ms" => "milliseconds",
        "s" => "seconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "" | "1" => "",
        annotation if annotation.starts_with('{') => "",
        other => other,
    };
    if !unit.is_empty() && !name.ends_with(unit) {
        name = format!("{name}_{unit}");
    }
    match &metric.data {
        Some(Data::Sum(sum)) if sum.is_monotonic => {
            let base = name.strip_suffix("_total").unwrap_or(&name);
            vec![format!("{base}_total")]
        }
        Some(Data::Histogram(_)) => ["bucket", "sum", "count"].iter().map(|s| format!("{name}_{s}")).collect(),
        _ => vec![name],
    }
}

/// Every PromQL expression in deploy/: the dashboards' `expr` fields and
/// the rules' `expr`s, with where each comes from; and the names the rules
/// record (which the alerts and dashboards may select).
fn shipped_queries() -> (Vec<(String, String)>, BTreeSet<String>) {
    let mut queries = shipped_dashboard_queries();
    let mut recorded = BTreeSet::new();
    for file in files(&deploy().join("prometheus/rules"), ".rules.yaml") {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in YamlLoader::load_from_str(&text).unwrap() {
            for group in document["groups"].as_vec().unwrap() {
                for rule in group["rules"].as_vec().unwrap() {
                    if let Yaml::String(name) = &rule["record"] {
                        recorded.insert(name.clone());
                    }
                    let expr = rule["expr"].as_str().unwrap_or_else(|| panic!("a rule without expr: {rule:?}"));
                    queries.push((file.display().to_string(), expr.to_owned()));
                }
            }
        }
    }
    (queries, recorded)
}

/// Grafana's `$__rate_interval`, which a dashboard's rate windows use where
/// the window is the dashboard's choice, as Grafana expands it at the
/// shortest step: four scrape intervals of the Prometheus data source
/// (`timeInterval: 15s`, grafana/provisioning/datasources/datasources.yaml).
const RATE_INTERVAL: &str = "1m";

/// Every `expr` of every shipped Grafana dashboard, with its file name, as
/// Grafana sends it to Prometheus. (The dashboards use no template variables;
/// the only built-in one they use, `$__rate_interval`, is expanded here.)
pub(crate) fn shipped_dashboard_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for file in files(&deploy().join("grafana/dashboards"), ".json") {
        let text = std::fs::read_to_string(&file).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            dashboard["templating"]["list"].as_array().is_none_or(Vec::is_empty),
            "{}: template variables would need substituting here",
            file.display()
        );
        let mut exprs = Vec::new();
        collect_json_exprs(&dashboard, &mut exprs);
        assert!(!exprs.is_empty(), "{} has no queries", file.display());
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        queries.extend(exprs.into_iter().map(|e| (name.clone(), e.replace("$__rate_interval", RATE_INTERVAL))));
    }
    queries
}

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/base/observability")
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no {suffix} files in {}", dir.display());
    found
}

fn collect_json_exprs(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) if !expr.trim().is_empty() => into.push(expr.clone()),
                    _ => collect_json_exprs(value, into),
                }
            }
        }
        serde_json::Value::Array(values) => values.iter().for_each(|v| collect_json_exprs(v, into)),
        _ => {}
    }
}

/// The metric names and label names an expression uses.
#[derive(Default)]
struct Selected {
    /// Per metric name, the labels its matchers use.
    metrics: BTreeMap<String, BTreeSet<String>>,
    /// Labels in `by (...)`/`without (...)` and vector matching.
    grouping: BTreeSet<String>,
}

impl Selected {
    fn selector(&mut self, selector: &VectorSelector) {
        let name = selector.name.clone().unwrap_or_else(|| {
            matcher_value(&selector.matchers, "__name__").unwrap_or_else(|| panic!("selector without a metric name"))
        });
        let labels = self.metrics.entry(name).or_default();
        for matcher in selector.matchers.matchers.iter().chain(selector.matchers.or_matchers.iter().flatten()) {
            labels.insert(matcher.name.clone());
        }
    }
}

fn matcher_value(matchers: &Matchers, label: &str) -> Option<String> {
    matchers.matchers.iter().find(|m| m.name == label).map(|m| m.value.clone())
}

impl ExprVisitor for Selected {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        match expr {
            Expr::VectorSelector(selector) => self.selector(selector),
            Expr::MatrixSelector(matrix) => self.selector(&matrix.vs),
            Expr::Aggregate(aggregate) => {
                if let Some(LabelModifier::Include(labels) | LabelModifier::Exclude(labels)) = &aggregate.modifier {
                    self.grouping.extend(labels.labels.iter().cloned());
                }
            }
            Expr::Binary(binary) => {
                if let Some(modifier) = &binary.modifier {
                    if let Some(LabelModifier::Include(labels) | LabelModifier::Exclude(labels)) = &modifier.matching {
                        self.grouping.extend(labels.labels.iter().cloned());
                    }
                    if let Some(labels) = modifier.card.labels() {
                        self.grouping.extend(labels.labels.iter().cloned());
                    }
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

/// Asserts that every shipped query parses and selects only what `exported`
/// (the metrics the services sent to a real OTLP receiver) contains.
pub(crate) fn assert_shipped_queries_select_exported_metrics(exported: &[&Metric]) {
    // Series name → the labels it carries.
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for metric in exported {
        let labels: BTreeSet<String> = super::telemetry::attribute_keys(metric.data.as_ref())
            .into_iter()
            .map(|key| key.replace('.', "_"))
            .chain(SERIES_LABELS.map(String::from))
            .collect();
        for (index, name) in prometheus_series(metric).into_iter().enumerate() {
            let mut labels = labels.clone();
            if matches!(metric.data, Some(Data::Histogram(_))) && index == 0 {
                labels.insert("le".into());
            }
            series.entry(name).or_default().extend(labels);
        }
    }
    let every_label: BTreeSet<String> = series.values().flatten().cloned().collect();

    let (queries, recorded) = shipped_queries();
    assert!(queries.len() > 20, "expected the dashboards and rules to hold many queries, found {}", queries.len());
    for (file, query) in &queries {
        let expr = parser::parse(query).unwrap_or_else(|e| panic!("{file}: `{query}` is not PromQL: {e}"));
        let mut selected = Selected::default();
        let _ = walk_expr(&mut selected, &expr);
        assert!(!selected.metrics.is_empty(), "{file}: `{query}` selects no metric");
        for (metric, labels) in &selected.metrics {
            if recorded.contains(metric) || NOT_FROM_THE_LIVE_SERVICES.contains(&metric.as_str()) {
                continue;
            }
            let known = series.get(metric).unwrap_or_else(|| {
                panic!("{file}: `{query}` selects {metric}, which no service exports; exported: {:?}", series.keys())
            });
            for label in labels {
                assert!(
                    known.contains(label),
                    "{file}: `{query}` matches {metric} on `{label}`, which it does not carry ({known:?})"
                );
            }
        }
        for label in &selected.grouping {
            assert!(
                every_label.contains(label) || label == "le",
                "{file}: `{query}` groups by `{label}`, which no exported metric carries"
            );
        }
    }
}

#[test]
fn prometheus_names_follow_the_exporter() {
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, Histogram, Sum};
    let metric = |name: &str, unit: &str, data: Data| Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    };
    let counter = Data::Sum(Sum { is_monotonic: true, ..Default::default() });
    assert_eq!(prometheus_series(&metric("cqrs.command", "", counter.clone())), ["cqrs_command_total"]);
    assert_eq!(prometheus_series(&metric("cqrs.events.produced", "", counter)), ["cqrs_events_produced_total"]);
    assert_eq!(
        prometheus_series(&metric("rpc.server.call.duration", "s", Data::Histogram(Histogram::default()))),
        [
            "rpc_server_call_duration_seconds_bucket",
            "rpc_server_call_duration_seconds_sum",
            "rpc_server_call_duration_seconds_count"
        ]
    );
    assert_eq!(
        prometheus_series(&metric("cqrs.projection.pending", "", Data::Gauge(Gauge::default()))),
        ["cqrs_projection_pending"]
    );
    assert_eq!(
        prometheus_series(&metric("cqrs.query.result_size", "{row}", Data::Gauge(Gauge::default()))),
        ["cqrs_query_result_size"]
    );
}
