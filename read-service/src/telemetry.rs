//! The read side's own telemetry: the `query.<Type>` span and the query
//! metrics (`cqrs.query.duration`, `cqrs.query`,
//! `cqrs.query.result_size`, `cqrs.query.consistency_wait`,
//! `cqrs.query.answer_age`). The SERVER span and `rpc.server.call.duration`
//! come from `shared::grpc_telemetry`.
//!
//! The query span links to the projection spans that wrote the rows it
//! returned (their contexts are stored in the rows), at most
//! [`MAX_LINKS`]: from a surprising answer, one click to the projection
//! and, through its link, to the command.

use std::time::{Instant, SystemTime};

use opentelemetry::{
    Context, KeyValue, global,
    metrics::{Counter, Histogram},
    trace::{SpanContext, SpanKind, Status as SpanStatus, TraceContextExt, Tracer},
};
use opentelemetry_semantic_conventions::attribute as semconv;
use shared::grpc_telemetry::{CQRS_SIDE, MILLISECONDS_BOUNDARIES, code_name};

use tonic::Code;

use crate::{app::Consistency, error::QueryError};

const SIDE: &str = "read";

/// Result-size boundaries (rows).
const SIZE_BOUNDARIES: [f64; 9] = [0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 500.0];

/// Answer-age boundaries in milliseconds: a millisecond to a day (an
/// account nobody touched for a day is a day old).
const AGE_BOUNDARIES: [f64; 18] = [
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    900_000.0,
    3_600_000.0,
    86_400_000.0,
];

/// The most projection spans a query span links to: the first rows' of a
/// page (a link is ~100 bytes of span; a page is up to 1,000 rows).
pub const MAX_LINKS: usize = 10;

/// What a query answered, as its telemetry records it.
#[derive(Debug, Clone, Default)]
pub struct Answered {
    /// Rows returned.
    pub count: usize,
    pub consistency: Consistency,
    /// When the newest event behind the answer happened, µs since the epoch.
    pub newest_event_us: Option<i64>,
    /// The projection spans that wrote the rows (the first [`MAX_LINKS`]).
    pub written_by: Vec<SpanContext>,
}

impl Answered {
    /// The answer of `rows`, each given as the time of the event behind it
    /// and the `traceparent` of the projection span that wrote it.
    pub fn new<'r>(consistency: Consistency, rows: impl IntoIterator<Item = (i64, Option<&'r str>)>) -> Self {
        let mut answered = Self { consistency, ..Self::default() };
        for (event_us, written_by) in rows {
            answered.count += 1;
            answered.newest_event_us = answered.newest_event_us.max(Some(event_us));
            if answered.written_by.len() < MAX_LINKS
                && let Some(span) = written_by.and_then(shared::propagation::from_traceparent)
            {
                answered.written_by.push(span);
            }
        }
        answered
    }
}

/// The three queries, as named in spans and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryType {
    GetAccount,
    ListAccounts,
    GetAccountHistory,
}

impl QueryType {
    fn name(self) -> &'static str {
        match self {
            Self::GetAccount => "GetAccount",
            Self::ListAccounts => "ListAccounts",
            Self::GetAccountHistory => "GetAccountHistory",
        }
    }

    fn span_name(self) -> &'static str {
        match self {
            Self::GetAccount => "query.GetAccount",
            Self::ListAccounts => "query.ListAccounts",
            Self::GetAccountHistory => "query.GetAccountHistory",
        }
    }
}

/// Instruments for queries.
pub struct QueryTelemetry {
    tracer: global::BoxedTracer,
    duration: Histogram<f64>,
    total: Counter<u64>,
    result_size: Histogram<u64>,
    consistency_wait: Histogram<f64>,
    answer_age: Histogram<f64>,
}

impl Default for QueryTelemetry {
    fn default() -> Self {
        let meter = global::meter("read-service");
        Self {
            tracer: global::tracer("read-service"),
            duration: meter
                .f64_histogram("cqrs.query.duration")
                .with_description("Time to answer a query, consistency wait included, in milliseconds")
                .with_boundaries(MILLISECONDS_BOUNDARIES.to_vec())
                .build(),
            total: meter.u64_counter("cqrs.query").with_description("Queries answered").build(),
            result_size: meter
                .u64_histogram("cqrs.query.result_size")
                .with_description("Rows a query returned")
                .with_boundaries(SIZE_BOUNDARIES.to_vec())
                .build(),
            consistency_wait: meter
                .f64_histogram("cqrs.query.consistency_wait")
                .with_description(
                    "Time queries with min_position waited for the read model (read-your-writes), in milliseconds",
                )
                .with_boundaries(MILLISECONDS_BOUNDARIES.to_vec())
                .build(),
            answer_age: meter
                .f64_histogram("cqrs.query.answer_age")
                .with_description(
                    "Age of answers as served: from the newest event behind the rows a query returned to the \
                     reply, in milliseconds (the staleness readers experience; idle accounts are old, not late)",
                )
                .with_boundaries(AGE_BOUNDARIES.to_vec())
                .build(),
        }
    }
}

/// A query being answered: its span's context, and its outcome to record.
/// Dropped unfinished (the client cancelled, or its deadline passed, e.g.
/// while waiting for `min_position`), it records the query as CANCELLED,
/// so that no call vanishes from the span and the metrics.
pub struct QueryCall<'a> {
    telemetry: &'a QueryTelemetry,
    query: QueryType,
    /// The `query.<Type>` span's context: run the query in it.
    pub cx: Context,
    started: Instant,
    finished: bool,
}

impl QueryCall<'_> {
    /// Records the query's outcome on its span and in the metrics.
    pub fn finish(mut self, outcome: Result<&Answered, &QueryError>) {
        self.finished = true;
        self.telemetry.record(self.query, &self.cx, self.started, outcome.map_err(Failure::Query));
    }
}

impl Drop for QueryCall<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.telemetry.record(self.query, &self.cx, self.started, Err(Failure::Cancelled));
        }
    }
}

/// Why a query has no answer.
enum Failure<'a> {
    Query(&'a QueryError),
    /// Dropped before it had an outcome.
    Cancelled,
}

impl QueryTelemetry {
    /// Starts the `query.<Type>` span as a child of the SERVER span.
    pub fn start(&self, query: QueryType) -> QueryCall<'_> {
        let span = self
            .tracer
            .span_builder(query.span_name())
            .with_kind(SpanKind::Internal)
            .with_attributes([KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("cqrs.query.type", query.name())])
            .start(&self.tracer);
        QueryCall {
            telemetry: self,
            query,
            cx: Context::current_with_span(span),
            started: Instant::now(),
            finished: false,
        }
    }

    fn record(&self, query: QueryType, cx: &Context, started: Instant, outcome: Result<&Answered, Failure<'_>>) {
        let span = cx.span();
        let mut attributes = vec![KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("query.type", query.name())];
        match outcome {
            Ok(answered) => {
                let (count, consistency) = (answered.count, answered.consistency);
                span.set_attribute(KeyValue::new("cqrs.query.result_count", count as i64));
                span.set_attribute(KeyValue::new("cqrs.query.as_of_position", consistency.as_of as i64));
                for written_by in &answered.written_by {
                    span.add_link(written_by.clone(), Vec::new());
                }
                if let Some(event_us) = answered.newest_event_us {
                    let now_us = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros());
                    let age_ms = (now_us as i64 - event_us).max(0) as f64 / 1000.0;
                    span.set_attribute(KeyValue::new("cqrs.query.answer_age_ms", age_ms));
                    self.answer_age
                        .record(age_ms, &[KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("query.type", query.name())]);
                }
                if let Some(waited) = consistency.waited {
                    let waited_ms = waited.as_secs_f64() * 1000.0;
                    span.set_attribute(KeyValue::new("cqrs.query.consistency_wait_ms", waited_ms));
                    self.consistency_wait.record(
                        waited_ms,
                        &[KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("query.type", query.name())],
                    );
                }
                self.result_size
                    .record(count as u64, &[KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("query.type", query.name())]);
                attributes.push(KeyValue::new("query.status", "success"));
            }
            Err(Failure::Cancelled) => {
                let code = code_name(Code::Cancelled);
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, code));
                span.set_status(SpanStatus::error("the call was cancelled (client gone or deadline passed)"));
                attributes.push(KeyValue::new("query.status", "error"));
                attributes.push(KeyValue::new(semconv::ERROR_TYPE, code));
            }
            Err(Failure::Query(error)) => {
                let code = code_name(error.code());
                if let QueryError::Behind(behind) = error {
                    span.set_attribute(KeyValue::new(
                        "cqrs.query.consistency_wait_ms",
                        behind.waited.as_secs_f64() * 1000.0,
                    ));
                }
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, code));
                span.record_error(error);
                span.set_status(SpanStatus::error(error.to_string()));
                attributes.push(KeyValue::new("query.status", "error"));
                attributes.push(KeyValue::new(semconv::ERROR_TYPE, code));
            }
        }
        span.end();
        self.duration.record(started.elapsed().as_secs_f64() * 1000.0, &attributes);
        self.total.add(1, &attributes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_links_to_at_most_ten_projection_spans_and_knows_its_newest_event() {
        let traces: Vec<String> = (1..=12).map(|n| format!("00-{n:032x}-{n:016x}-01")).collect();
        let rows = traces.iter().enumerate().map(|(i, trace)| (i as i64 * 10, Some(trace.as_str())));
        let answered = Answered::new(Consistency::default(), rows.chain([(5, None), (7, Some("garbage"))]));
        assert_eq!(answered.count, 14);
        assert_eq!(answered.newest_event_us, Some(110));
        assert_eq!(answered.written_by.len(), MAX_LINKS);
        assert_eq!(answered.written_by[0].span_id().to_string(), format!("{:016x}", 1));
    }
}
