//! Recording outcomes and reporting them: per operation a latency
//! histogram (HdrHistogram, µs, 3 significant digits) and errors by gRPC
//! code; printed as a table or as JSON.

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::Histogram;
use tonic::Code;

use crate::workload::Operation;

/// Everything recorded for one operation.
pub struct OperationStats {
    latency: Histogram<u64>,
    errors: BTreeMap<&'static str, u64>,
}

impl Default for OperationStats {
    fn default() -> Self {
        Self { latency: histogram(), errors: BTreeMap::new() }
    }
}

/// 1 µs to 1 hour, 3 significant digits: constant, valid bounds.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid HdrHistogram bounds")
}

/// The outcomes of a run.
#[derive(Default)]
pub struct Recorder {
    operations: BTreeMap<Operation, OperationStats>,
    /// Open loop: operations not started because too many were in flight.
    pub dropped: u64,
}

impl Recorder {
    /// Records one finished operation.
    pub fn record(&mut self, operation: Operation, latency: Duration, outcome: Result<(), Code>) {
        let stats = self.operations.entry(operation).or_default();
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        stats.latency.saturating_record(micros);
        if let Err(code) = outcome {
            *stats.errors.entry(shared::grpc_telemetry::code_name(code)).or_default() += 1;
        }
    }

    /// Operations finished so far, errors among them, and the p99 over all
    /// operations in milliseconds (for the progress line).
    pub fn progress(&self) -> (u64, u64, f64) {
        let mut all = histogram();
        let mut errors = 0;
        for stats in self.operations.values() {
            let _ = all.add(&stats.latency);
            errors += stats.errors.values().sum::<u64>();
        }
        (all.len(), errors, all.value_at_quantile(0.99) as f64 / 1000.0)
    }

    /// The final report over `elapsed`.
    pub fn report(&self, elapsed: Duration) -> Report {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let rows = self
            .operations
            .iter()
            .map(|(operation, stats)| {
                let ms = |q: f64| stats.latency.value_at_quantile(q) as f64 / 1000.0;
                Row {
                    operation: operation.name(),
                    count: stats.latency.len(),
                    errors: stats.errors.clone(),
                    throughput: stats.latency.len() as f64 / seconds,
                    p50_ms: ms(0.5),
                    p90_ms: ms(0.9),
                    p99_ms: ms(0.99),
                    max_ms: stats.latency.max() as f64 / 1000.0,
                }
            })
            .collect();
        Report { seconds, rows, dropped: self.dropped, timeline: Vec::new() }
    }
}

/// One operation's line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    pub operation: &'static str,
    pub count: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What finished in one second of a run (all operations together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Second {
    pub operations: u64,
    pub errors: u64,
}

/// A run's report.
#[derive(Debug, Clone)]
pub struct Report {
    pub seconds: f64,
    pub rows: Vec<Row>,
    pub dropped: u64,
    /// Second by second, from the start of the load (after the setup): how
    /// throughput and errors moved, e.g. while a service restarted.
    pub timeline: Vec<Second>,
}

impl Report {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<18} {:>9} {:>10} {:>8} {:>8} {:>8} {:>9}  errors\n",
            "operation", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        for row in &self.rows {
            let errors: Vec<String> = row.errors.iter().map(|(code, n)| format!("{code}={n}")).collect();
            out.push_str(&format!(
                "{:<18} {:>9} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>9.2}  {}\n",
                row.operation,
                row.count,
                row.throughput,
                row.p50_ms,
                row.p90_ms,
                row.p99_ms,
                row.max_ms,
                if errors.is_empty() { "-".to_owned() } else { errors.join(" ") }
            ));
        }
        out.push_str(&format!("over {:.1} s", self.seconds));
        if self.dropped > 0 {
            out.push_str(&format!("; {} operations dropped (too many in flight)", self.dropped));
        }
        out
    }

    /// The report as JSON for scripts.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "seconds": self.seconds,
            "dropped": self.dropped,
            "operations": self.rows.iter().map(|row| serde_json::json!({
                "operation": row.operation,
                "count": row.count,
                "errors": row.errors,
                "throughput": row.throughput,
                "p50_ms": row.p50_ms,
                "p90_ms": row.p90_ms,
                "p99_ms": row.p99_ms,
                "max_ms": row.max_ms,
            })).collect::<Vec<_>>(),
            "timeline": self.timeline.iter().map(|second| serde_json::json!({
                "operations": second.operations,
                "errors": second.errors,
            })).collect::<Vec<_>>(),
        })
    }
}
