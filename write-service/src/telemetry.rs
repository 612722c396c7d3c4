//! The write side's own telemetry: the `command.<Type>` span and the
//! command metrics (`cqrs.command.duration`, `cqrs.command.total`,
//! `cqrs.events.produced`). The SERVER span and `rpc.server.call.duration`
//! come from `shared::grpc_telemetry`.

use std::time::Instant;

use opentelemetry::{
    Context, KeyValue, global,
    metrics::{Counter, Histogram},
    trace::{SpanKind, Status as SpanStatus, TraceContextExt, Tracer},
};
use opentelemetry_semantic_conventions::attribute as semconv;
use shared::grpc_telemetry::{CQRS_SIDE, MILLISECONDS_BOUNDARIES, code_name};

use crate::{app::Accepted, error::CommandError};

const SIDE: &str = "write";

/// The four commands, as named in spans and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandType {
    OpenAccount,
    DepositFunds,
    WithdrawFunds,
    CloseAccount,
}

impl CommandType {
    fn name(self) -> &'static str {
        match self {
            Self::OpenAccount => "OpenAccount",
            Self::DepositFunds => "DepositFunds",
            Self::WithdrawFunds => "WithdrawFunds",
            Self::CloseAccount => "CloseAccount",
        }
    }

    fn span_name(self) -> &'static str {
        match self {
            Self::OpenAccount => "command.OpenAccount",
            Self::DepositFunds => "command.DepositFunds",
            Self::WithdrawFunds => "command.WithdrawFunds",
            Self::CloseAccount => "command.CloseAccount",
        }
    }
}

/// Instruments for command handling.
pub struct CommandTelemetry {
    tracer: global::BoxedTracer,
    duration: Histogram<f64>,
    total: Counter<u64>,
    produced: Counter<u64>,
}

impl Default for CommandTelemetry {
    fn default() -> Self {
        let meter = global::meter("write-service");
        Self {
            tracer: global::tracer("write-service"),
            duration: meter
                .f64_histogram("cqrs.command.duration")
                .with_unit("ms")
                .with_description("Time to decide a command and append its event")
                .with_boundaries(MILLISECONDS_BOUNDARIES.to_vec())
                .build(),
            total: meter.u64_counter("cqrs.command.total").with_description("Commands handled").build(),
            produced: meter
                .u64_counter("cqrs.events.produced")
                .with_description("Domain events appended to the event log")
                .build(),
        }
    }
}

impl CommandTelemetry {
    /// Starts the `command.<Type>` span as a child of the current context
    /// (the SERVER span). Returns the context to run the command in.
    pub fn start(&self, command: CommandType) -> (Context, Instant) {
        let span = self
            .tracer
            .span_builder(command.span_name())
            .with_kind(SpanKind::Internal)
            .with_attributes([KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("cqrs.command.type", command.name())])
            .start(&self.tracer);
        (Context::current_with_span(span), Instant::now())
    }

    /// Records the command's outcome on its span and in the metrics.
    pub fn finish(
        &self,
        command: CommandType,
        cx: &Context,
        started: Instant,
        outcome: Result<&Accepted, &CommandError>,
    ) {
        let span = cx.span();
        let mut attributes = vec![KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("command.type", command.name())];
        match outcome {
            Ok(accepted) => {
                let count = u64::from(accepted.produced.is_some());
                span.set_attribute(KeyValue::new("cqrs.events.count", count as i64));
                if let Some(event_type) = accepted.produced {
                    span.add_event("domain_event_produced", vec![KeyValue::new("event.type", event_type)]);
                    self.produced
                        .add(1, &[KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("command.type", command.name())]);
                }
                attributes.push(KeyValue::new("command.status", "success"));
            }
            Err(error) => {
                let code = code_name(error.code());
                span.set_attribute(KeyValue::new("cqrs.events.count", 0));
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, code));
                span.record_error(error);
                span.set_status(SpanStatus::error(error.to_string()));
                attributes.push(KeyValue::new("command.status", "error"));
                attributes.push(KeyValue::new(semconv::ERROR_TYPE, code));
            }
        }
        span.end();
        self.duration.record(started.elapsed().as_secs_f64() * 1000.0, &attributes);
        self.total.add(1, &attributes);
    }
}
