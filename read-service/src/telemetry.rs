//! The read side's own telemetry: the `query.<Type>` span and the query
//! metrics (`cqrs.query.duration`, `cqrs.query`,
//! `cqrs.query.result_size`, `cqrs.query.consistency_wait`). The SERVER
//! span and `rpc.server.call.duration` come from `shared::grpc_telemetry`.

use std::time::Instant;

use opentelemetry::{
    Context, KeyValue, global,
    metrics::{Counter, Histogram},
    trace::{SpanKind, Status as SpanStatus, TraceContextExt, Tracer},
};
use opentelemetry_semantic_conventions::attribute as semconv;
use shared::grpc_telemetry::{CQRS_SIDE, MILLISECONDS_BOUNDARIES, code_name};

use tonic::Code;

use crate::{app::Consistency, error::QueryError};

const SIDE: &str = "read";

/// Result-size boundaries (rows).
const SIZE_BOUNDARIES: [f64; 9] = [0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 500.0];

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
    pub fn finish(mut self, outcome: Result<(usize, Consistency), &QueryError>) {
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

    fn record(
        &self,
        query: QueryType,
        cx: &Context,
        started: Instant,
        outcome: Result<(usize, Consistency), Failure<'_>>,
    ) {
        let span = cx.span();
        let mut attributes = vec![KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("query.type", query.name())];
        match outcome {
            Ok((count, consistency)) => {
                span.set_attribute(KeyValue::new("cqrs.query.result_count", count as i64));
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
