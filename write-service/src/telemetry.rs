//! The write side's own telemetry: the `command.<Type>` span and the
//! command metrics (`cqrs.command.duration`, `cqrs.command`,
//! `cqrs.events.produced`, `cqrs.command.attempts`). The SERVER span and `rpc.server.call.duration`
//! come from `shared::grpc_telemetry`.

use std::time::Instant;

use opentelemetry::{
    Context, KeyValue, global,
    metrics::{Counter, Histogram},
    trace::{SpanKind, Status as SpanStatus, TraceContextExt, Tracer},
};
use opentelemetry_semantic_conventions::attribute as semconv;
use shared::grpc_telemetry::{CQRS_SIDE, MILLISECONDS_BOUNDARIES, code_name};

use tonic::Code;

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
    attempts: Histogram<u64>,
}

impl Default for CommandTelemetry {
    fn default() -> Self {
        let meter = global::meter("write-service");
        Self {
            tracer: global::tracer("write-service"),
            duration: meter
                .f64_histogram("cqrs.command.duration")
                .with_description("Time to decide a command and append its event, in milliseconds")
                .with_boundaries(MILLISECONDS_BOUNDARIES.to_vec())
                .build(),
            total: meter.u64_counter("cqrs.command").with_description("Commands handled").build(),
            produced: meter
                .u64_counter("cqrs.events.produced")
                .with_description("Domain events appended to the event log")
                .build(),
            attempts: meter
                .u64_histogram("cqrs.command.attempts")
                .with_description(
                    "Times a command was decided against its account's state: 1 with no concurrent writer, \
                     more after races lost to another replica (contention on hot accounts)",
                )
                .with_boundaries(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0])
                .build(),
        }
    }
}

/// A command being handled: its span's context, and its outcome to record.
/// Dropped unfinished (the client cancelled, or its deadline passed, and
/// the server dropped the handler), it records the command as CANCELLED,
/// so that no call vanishes from the span and the metrics.
pub struct CommandCall<'a> {
    telemetry: &'a CommandTelemetry,
    command: CommandType,
    /// The `command.<Type>` span's context: run the command in it.
    pub cx: Context,
    started: Instant,
    finished: bool,
}

impl CommandCall<'_> {
    /// Records the command's outcome on its span and in the metrics.
    pub fn finish(mut self, outcome: Result<&Accepted, &CommandError>) {
        self.finished = true;
        let attempts = match outcome {
            Ok(accepted) => accepted.attempts,
            Err(CommandError::Contention { attempts, .. }) => u32::try_from(*attempts).unwrap_or(u32::MAX),
            Err(_) => 0,
        };
        if attempts > 0 {
            let attributes = [KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("command.type", self.command.name())];
            self.telemetry.attempts.record(u64::from(attempts), &attributes);
            self.cx.span().set_attribute(KeyValue::new("cqrs.command.attempts", i64::from(attempts)));
        }
        self.telemetry.record(
            self.command,
            &self.cx,
            self.started,
            outcome.map_err(|error| (error.code(), error as &dyn std::error::Error)),
        );
    }
}

impl Drop for CommandCall<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let cancelled = Cancelled;
            self.telemetry.record(self.command, &self.cx, self.started, Err((Code::Cancelled, &cancelled)));
        }
    }
}

/// Why a command has no outcome: it was dropped before it had one.
#[derive(Debug, thiserror::Error)]
#[error("the call was cancelled (client gone or deadline passed) before the command finished")]
struct Cancelled;

impl CommandTelemetry {
    /// Starts the `command.<Type>` span as a child of the current context
    /// (the SERVER span).
    pub fn start(&self, command: CommandType) -> CommandCall<'_> {
        let span = self
            .tracer
            .span_builder(command.span_name())
            .with_kind(SpanKind::Internal)
            .with_attributes([KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("cqrs.command.type", command.name())])
            .start(&self.tracer);
        CommandCall {
            telemetry: self,
            command,
            cx: Context::current_with_span(span),
            started: Instant::now(),
            finished: false,
        }
    }

    fn record(
        &self,
        command: CommandType,
        cx: &Context,
        started: Instant,
        outcome: Result<&Accepted, (Code, &dyn std::error::Error)>,
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
            Err((code, error)) => {
                let code = code_name(code);
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
