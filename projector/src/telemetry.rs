//! The projection side's telemetry: one `projection.<name>` CONSUMER span
//! per event and projection, in its own trace and *linked* (not parented)
//! to the PRODUCER span whose context the event carries; the lag histogram;
//! outcome and dead-letter counters; pending and checkpoint gauges.
//!
//! A link, not a parent: redeliveries, replays and rebuilds carry the
//! original context, and parenting on it would grow one trace without bound.
//!
//! Replay-aware: a `projector rebuild` re-applies history, whose events are
//! as old as the log. Counted as live traffic they would pin the lag at its
//! top bucket and page on-call, and every replayed event would start a
//! trace. So replayed events make no span and no lag; they are counted in
//! `cqrs.projection.replayed`, with the replay's position and target as
//! gauges (progress, rate and ETA on the projection dashboard). The live
//! projector re-applies history too while a rebuild runs (both race
//! through the same checkpoints after the reset); what it applies at or
//! below the highest checkpoint it had seen is replay as well.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::SystemTime,
};

use opentelemetry::{
    KeyValue, StringValue, global,
    metrics::{Counter, Histogram},
    trace::{Link, Span, SpanContext, SpanKind, Status as SpanStatus, TraceContextExt, Tracer},
};
use opentelemetry_semantic_conventions::attribute as semconv;
use read_model::{Checkpoints, Projection};
use shared::grpc_telemetry::CQRS_SIDE;

const SIDE: &str = "projection";

/// Lag boundaries in milliseconds: a millisecond to five minutes.
const LAG_BOUNDARIES: [f64; 16] =
    [1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0];

/// What happened to an event in one projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The projection applied it.
    Applied,
    /// The projection had applied it before (redelivery, replay).
    DuplicateSkipped,
    /// It was set aside as a dead letter, for this reason.
    Failed(String),
}

impl Outcome {
    fn name(&self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::DuplicateSkipped => "duplicate_skipped",
            Self::Failed(_) => "failed",
        }
    }
}

/// What the telemetry needs to know about one handled event.
#[derive(Debug, Clone)]
pub struct Handled {
    pub position: u64,
    pub subject: String,
    pub event_type: Option<String>,
    pub account_id: Option<String>,
    pub occurred_at_us: Option<i64>,
    /// The producer's span context, from the event's headers.
    pub producer: opentelemetry::Context,
    pub outcomes: Vec<(Projection, Outcome)>,
}

/// What the projector is applying: the live log, or history again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Events as they are appended: spans, lag, outcomes.
    Live,
    /// A rebuild: progress only (see the module's documentation).
    Replay,
}

/// Instruments for projecting.
#[derive(Clone)]
pub struct ProjectionTelemetry {
    traffic: Traffic,
    tracer: Arc<global::BoxedTracer>,
    /// Attributes every CONSUMER span carries (consumer group, template).
    consumer: Arc<[KeyValue]>,
    lag: Histogram<f64>,
    events: Counter<u64>,
    replayed: Counter<u64>,
    dead_letters: Counter<u64>,
    pending: Arc<AtomicU64>,
    checkpoints: Arc<[AtomicU64; 2]>,
    /// Whether `checkpoints` were read from the store (0 is a checkpoint).
    checkpoints_known: Arc<AtomicBool>,
    /// Per projection, the highest checkpoint this process has seen: an
    /// event at or below it was applied before, and is applied again only
    /// because a rebuild reset the projection (the live projector races
    /// the rebuild through the same checkpoints). That is replay, not live
    /// lag.
    high_water: Arc<[AtomicU64; 2]>,
    /// Age in ms of the oldest event not yet applied; 0 when caught up.
    staleness_ms: Arc<AtomicU64>,
    replay: Arc<[AtomicU64; 2]>,
    /// Whether the gauges report (this process holds the partition).
    active: Arc<AtomicBool>,
}

impl ProjectionTelemetry {
    /// Instruments for `traffic` read by the durable consumer `consumer`
    /// from the subjects `destination_template` (`<prefix>.account.*`).
    ///
    /// `partition` (when the read model has several) labels the gauges,
    /// which report only while this process holds the partition (see
    /// [`Self::set_active`]): a process that lost it says nothing rather
    /// than a frozen value.
    pub fn new(traffic: Traffic, consumer: &str, destination_template: String, partition: Option<u32>) -> Self {
        let meter = global::meter("projector");
        let active = Arc::new(AtomicBool::new(true));
        let mut labels = vec![KeyValue::new(CQRS_SIDE, SIDE)];
        labels.extend(partition.map(|p| KeyValue::new("cqrs.projection.partition", i64::from(p))));
        let labels: Arc<[KeyValue]> = Arc::from(labels);
        let pending = Arc::new(AtomicU64::new(0));
        let checkpoints: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let (observed_pending, is_active, attributes) =
            (Arc::clone(&pending), Arc::clone(&active), Arc::clone(&labels));
        meter
            .u64_observable_gauge("cqrs.projection.pending")
            .with_description("Events in the log that the projector's consumer has not received yet")
            .with_callback(move |gauge| {
                if is_active.load(Ordering::Relaxed) {
                    gauge.observe(observed_pending.load(Ordering::Relaxed), &attributes);
                }
            })
            .build();
        let (observed_checkpoints, is_active, attributes) =
            (Arc::clone(&checkpoints), Arc::clone(&active), Arc::clone(&labels));
        meter
            .u64_observable_gauge("cqrs.projection.checkpoint")
            .with_description("The last event-log position each projection has applied")
            .with_callback(move |gauge| {
                if !is_active.load(Ordering::Relaxed) {
                    return;
                }
                for projection in Projection::ALL {
                    let mut attributes = attributes.to_vec();
                    attributes.push(KeyValue::new("projection.name", projection.name()));
                    gauge.observe(observed_checkpoints[index(projection)].load(Ordering::Relaxed), &attributes);
                }
            })
            .build();
        let staleness_ms = Arc::new(AtomicU64::new(0));
        if traffic == Traffic::Live {
            let (observed, is_active, attributes) =
                (Arc::clone(&staleness_ms), Arc::clone(&active), Arc::clone(&labels));
            meter
                .u64_observable_gauge("cqrs.projection.staleness")
                .with_description(
                    "Age of the oldest event the projections have not applied yet, in milliseconds (0 when \
                     caught up): grows while the projector is stalled, unlike the lag of applied events",
                )
                .with_callback(move |gauge| {
                    if is_active.load(Ordering::Relaxed) {
                        gauge.observe(observed.load(Ordering::Relaxed), &attributes)
                    }
                })
                .build();
        }
        let dead_letters = meter
            .u64_counter("cqrs.projection.dead_letters")
            .with_description("Events set aside because they cannot be applied")
            .build();
        // Exported from the start at 0, so that the first dead letter is an
        // increase (a series that appears at 1 is invisible to `increase()`).
        if traffic == Traffic::Live {
            dead_letters.add(0, &[KeyValue::new(CQRS_SIDE, SIDE)]);
        }
        let replay: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        if traffic == Traffic::Replay {
            let gauges = [
                ("cqrs.projection.replay.position", "The last event-log position a rebuild has applied"),
                ("cqrs.projection.replay.target", "The event-log position a rebuild replays up to"),
            ];
            for (slot, (name, description)) in gauges.into_iter().enumerate() {
                let observed = Arc::clone(&replay);
                meter
                    .u64_observable_gauge(name)
                    .with_description(description)
                    .with_callback(move |gauge| {
                        gauge.observe(observed[slot].load(Ordering::Relaxed), &[KeyValue::new(CQRS_SIDE, SIDE)])
                    })
                    .build();
            }
        }
        Self {
            traffic,
            consumer: Arc::from(vec![
                // Arc-backed: cloned onto every span without allocating.
                KeyValue::new(semconv::MESSAGING_CONSUMER_GROUP_NAME, StringValue::from(Arc::<str>::from(consumer))),
                KeyValue::new(
                    semconv::MESSAGING_DESTINATION_TEMPLATE,
                    StringValue::from(Arc::<str>::from(destination_template)),
                ),
            ]),
            replayed: meter
                .u64_counter("cqrs.projection.replayed")
                .with_description("Events a rebuild re-applied, per projection (not live traffic)")
                .build(),
            tracer: Arc::new(global::tracer("projector")),
            lag: meter
                .f64_histogram("cqrs.projection.lag")
                .with_description("Time from an event's production to its projection becoming visible, in milliseconds")
                .with_boundaries(LAG_BOUNDARIES.to_vec())
                .build(),
            events: meter
                .u64_counter("cqrs.projection.events")
                .with_description("Events handled per projection, by outcome")
                .build(),
            dead_letters,
            pending,
            checkpoints,
            checkpoints_known: Arc::new(AtomicBool::new(false)),
            high_water: Arc::new(Default::default()),
            staleness_ms,
            replay,
            active,
        }
    }
}

fn index(projection: Projection) -> usize {
    match projection {
        Projection::AccountSummary => 0,
        Projection::AccountHistory => 1,
    }
}

impl ProjectionTelemetry {
    /// Whether this process projects the partition now: only then do its
    /// gauges report.
    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    /// Records the consumer's pending count.
    pub fn set_pending(&self, pending: u64) {
        self.pending.store(pending, Ordering::Relaxed);
    }

    /// Up to where every projection has applied the log at least once:
    /// per projection the higher of its checkpoint and the highest
    /// checkpoint seen (what a rebuild reset is being re-applied, not
    /// waiting for the first time), the lowest of those; once known.
    pub fn applied(&self) -> Option<u64> {
        if !self.checkpoints_known.load(Ordering::Relaxed) {
            return None;
        }
        Projection::ALL
            .iter()
            .map(|p| {
                let i = index(*p);
                self.checkpoints[i].load(Ordering::Relaxed).max(self.high_water[i].load(Ordering::Relaxed))
            })
            .min()
    }

    /// Records the age of the oldest unapplied event (0: caught up).
    pub fn set_staleness(&self, staleness: std::time::Duration) {
        self.staleness_ms.store(u64::try_from(staleness.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Records how far a rebuild is: `position` of `target`.
    pub fn set_replay_progress(&self, position: u64, target: u64) {
        self.replay[0].store(position, Ordering::Relaxed);
        self.replay[1].store(target, Ordering::Relaxed);
    }

    /// Records the checkpoints after a commit (or as read from the store).
    pub fn set_checkpoints(&self, checkpoints: Checkpoints) {
        for projection in Projection::ALL {
            let i = index(projection);
            self.checkpoints[i].store(checkpoints.get(projection), Ordering::Relaxed);
            self.high_water[i].fetch_max(checkpoints.get(projection), Ordering::Relaxed);
        }
        self.checkpoints_known.store(true, Ordering::Relaxed);
    }

    /// Starts one event's `projection.<name>` spans as its batch begins
    /// writing (`started`: when the batch began), so that the rows can
    /// record which span wrote them ([`EventSpans::context`]); they end in
    /// [`Self::finish`] once the batch committed. Replayed events get none.
    pub fn start(&self, handled: &Handled, started: SystemTime) -> EventSpans {
        // The high-water mark is the highest checkpoint seen before this
        // batch: what is at or below it was applied before.
        let replayed: Vec<(Projection, bool)> = handled
            .outcomes
            .iter()
            .map(|(projection, _)| {
                let replayed = self.traffic == Traffic::Replay
                    || handled.position <= self.high_water[index(*projection)].load(Ordering::Relaxed);
                (*projection, replayed)
            })
            .collect();
        let mut spans = EventSpans { replayed, spans: Vec::new(), finished: false };
        if spans.replayed.iter().all(|(_, replayed)| *replayed) {
            return spans;
        }
        let event_type = handled.event_type.as_deref().unwrap_or("unknown");
        let producer = handled.producer.span().span_context().clone();
        for (projection, outcome) in &handled.outcomes {
            if spans.is_replayed(*projection) {
                continue;
            }
            let mut attributes = vec![
                KeyValue::new(CQRS_SIDE, SIDE),
                KeyValue::new("cqrs.projection.name", projection.name()),
                KeyValue::new("cqrs.event.type", event_type.to_owned()),
                KeyValue::new("cqrs.event.position", handled.position as i64),
                // The blog's key for what happened to the event.
                KeyValue::new("cqrs.projection.status", outcome.name()),
                KeyValue::new(semconv::MESSAGING_SYSTEM, "nats"),
                KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "process"),
                KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "process"),
                KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, handled.subject.clone()),
            ];
            attributes.extend(self.consumer.iter().cloned());
            if let Some(account_id) = &handled.account_id {
                attributes.push(KeyValue::new("cqrs.event.aggregate_id", account_id.clone()));
            }
            let links = if producer.is_valid() { vec![Link::with_context(producer.clone())] } else { Vec::new() };
            let mut span = self
                .tracer
                .span_builder(span_name(*projection))
                .with_kind(SpanKind::Consumer)
                .with_start_time(started)
                .with_links(links)
                .with_attributes(attributes)
                .start_with_context(self.tracer.as_ref(), &opentelemetry::Context::new());
            if let Outcome::Failed(reason) = outcome {
                // Low-cardinality class; the reason itself is the status.
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, "dead_letter"));
                span.set_status(SpanStatus::error(reason.clone()));
            }
            spans.spans.push((*projection, span));
        }
        spans
    }

    /// Ends one event's spans and records its metrics, once its batch
    /// committed: now is when its effects became visible.
    pub fn finish(&self, handled: &Handled, mut spans: EventSpans) {
        spans.finished = true;
        for (projection, outcome) in &handled.outcomes {
            if spans.is_replayed(*projection) && *outcome != Outcome::DuplicateSkipped {
                self.replayed
                    .add(1, &[KeyValue::new(CQRS_SIDE, SIDE), KeyValue::new("projection.name", projection.name())]);
            }
        }
        let now = SystemTime::now();
        let now_us = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        let lag_ms = handled.occurred_at_us.map(|at| (now_us - at).max(0) as f64 / 1000.0);
        for (_, span) in &mut spans.spans {
            if let Some(lag_ms) = lag_ms {
                span.set_attribute(KeyValue::new("cqrs.projection.lag_ms", lag_ms));
            }
            span.end_with_timestamp(now);
        }
        let event_type = handled.event_type.as_deref().unwrap_or("unknown");
        let mut dead_lettered = false;
        for (projection, outcome) in handled.outcomes.iter().filter(|(projection, _)| !spans.is_replayed(*projection)) {
            dead_lettered |= matches!(outcome, Outcome::Failed(_));
            let labels = [
                KeyValue::new(CQRS_SIDE, SIDE),
                KeyValue::new("projection.name", projection.name()),
                KeyValue::new("outcome", outcome.name()),
            ];
            self.events.add(1, &labels);
            if let (Outcome::Applied, Some(lag_ms)) = (outcome, lag_ms) {
                self.lag.record(
                    lag_ms,
                    &[
                        KeyValue::new(CQRS_SIDE, SIDE),
                        KeyValue::new("projection.name", projection.name()),
                        KeyValue::new("event.type", event_type.to_owned()),
                    ],
                );
            }
        }
        if dead_lettered {
            self.dead_letters.add(1, &[KeyValue::new(CQRS_SIDE, SIDE)]);
        }
    }
}

/// One event's projection spans between [`ProjectionTelemetry::start`] and
/// [`ProjectionTelemetry::finish`]. Dropped unfinished (the batch failed
/// and will be retried), they end as errors: that attempt changed nothing.
pub struct EventSpans {
    /// Per projection due, whether the event is replay there.
    replayed: Vec<(Projection, bool)>,
    spans: Vec<(Projection, global::BoxedSpan)>,
    finished: bool,
}

impl EventSpans {
    fn is_replayed(&self, projection: Projection) -> bool {
        self.replayed.iter().any(|(p, replayed)| *p == projection && *replayed)
    }

    /// The context of `projection`'s span, if it is sampled and exported:
    /// what the row it writes records as its provenance.
    pub fn context(&self, projection: Projection) -> Option<&SpanContext> {
        self.spans
            .iter()
            .find(|(p, _)| *p == projection)
            .map(|(_, span)| span.span_context())
            .filter(|context| context.is_sampled() && shared::telemetry::spans_exported())
    }
}

impl Drop for EventSpans {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for (_, span) in &mut self.spans {
            // Not what happened to the event: its retry will say that.
            span.set_attribute(KeyValue::new("cqrs.projection.status", "not_committed"));
            span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, "not_committed"));
            span.set_status(SpanStatus::error("the batch did not commit; it is retried"));
            span.end();
        }
    }
}

fn span_name(projection: Projection) -> &'static str {
    match projection {
        Projection::AccountSummary => "projection.account_summary",
        Projection::AccountHistory => "projection.account_history",
    }
}
