//! Applying the event log to the read model, exactly once and in order:
//! the I/O around the batch rules of [`crate::batch`].
//!
//! - **Exactly once**: a batch's rows and the checkpoints (last applied
//!   position per projection) commit in one transaction; an event at or
//!   below a projection's checkpoint is skipped and acked. Messages are
//!   acked only after the commit.
//! - **In order**: a projection applies position `p` only when its
//!   checkpoint is `p - 1` (or the log holds nothing in between). The
//!   consumer is (re)created at the lowest checkpoint + 1, so a message that
//!   JetStream redelivers after later ones can never be skipped by a
//!   checkpoint that moved past it: on a gap the consumer is repositioned.
//! - **Poison**: an event that cannot be decoded or applied is recorded in
//!   `dead_letters` with the reason, counted, and passed over in the same
//!   transaction, so it never blocks the events behind it. A read-store
//!   failure, by contrast, is retried (with backoff) without limit: skipping
//!   would break the order.

use std::{collections::HashMap, future::Future, pin::pin, sync::Arc, time::Duration};

use async_nats::{
    HeaderMap,
    jetstream::{self, AckKind, stream::DirectGetErrorKind},
};
use futures::{FutureExt, StreamExt};
use read_model::{Checkpoints, DeadLetter, Projection, ReadStore, StoreError};
use shared::{
    event_log::{EventLogArgs, headers},
    propagation,
    retry::Backoff,
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    batch::{self, Arrival, Decided, Order},
    config::Config,
    domain::{EventRecord, account_of_subject},
    error::ProjectorError,
    telemetry::{EventSpans, Handled, Outcome, ProjectionTelemetry, Traffic},
};

pub(crate) mod consumer;

/// An event as delivered by JetStream.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub position: u64,
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: bytes::Bytes,
}

impl Delivered {
    /// The parts of a JetStream message the projector uses.
    pub fn from_message(message: &jetstream::Message) -> Result<Self, ProjectorError> {
        let info = message.info().map_err(ProjectorError::event_log("read a message's metadata"))?;
        Ok(Self {
            position: info.stream_sequence,
            subject: message.subject.to_string(),
            headers: message.headers.clone().unwrap_or_default(),
            payload: message.payload.clone(),
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.as_str())
    }
}

/// What applying a batch did.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// How many messages, from the start of the batch, were handled (and
    /// may be acked). The rest come after a gap.
    pub handled: usize,
    /// The position a projection waits for, if the batch skipped ahead of it.
    pub gap: Option<u64>,
    /// Per handled message, for telemetry.
    pub events: Vec<Handled>,
    /// The checkpoints after the commit: the lowest of the partitions'.
    pub checkpoints: Checkpoints,
}

/// Which accounts a projector applies: the partitions it owns, of how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    pub owned: Vec<u32>,
    pub count: u32,
}

impl Partitions {
    /// Every partition of `count` (a rebuild; the single-partition default).
    pub fn all(count: u32) -> Self {
        Self { owned: (0..count.max(1)).collect(), count: count.max(1) }
    }

    /// Partition `index` of `count` alone (a partition's live projector).
    pub fn one(index: u32, count: u32) -> Self {
        Self { owned: vec![index], count: count.max(1) }
    }
}

/// The projection engine over one read store and one event stream, for
/// some partitions of the accounts.
pub struct Projector {
    store: ReadStore,
    stream: jetstream::stream::Stream,
    names: EventLogArgs,
    partitions: Partitions,
    /// The durable consumer's name (live only).
    consumer: String,
    telemetry: ProjectionTelemetry,
}

impl Projector {
    /// A projector of the live log for `partitions`, consuming as
    /// `consumer` (one consumer per partition: see [`consumer_name`]).
    pub fn new(
        store: ReadStore,
        stream: jetstream::stream::Stream,
        names: EventLogArgs,
        consumer: String,
        partitions: Partitions,
    ) -> Self {
        let partition = (partitions.count > 1).then(|| partitions.owned.first().copied().unwrap_or(0));
        let telemetry = ProjectionTelemetry::new(Traffic::Live, &consumer, names.all_accounts_subject(), partition);
        Self { store, stream, names, partitions, consumer, telemetry }
    }

    /// A projector that replays history into every partition (`projector
    /// rebuild`): its telemetry reports progress, not lag (see `telemetry`).
    pub fn for_replay(
        store: ReadStore,
        stream: jetstream::stream::Stream,
        names: EventLogArgs,
        partitions: u32,
    ) -> Self {
        let telemetry = ProjectionTelemetry::new(Traffic::Replay, "rebuild", names.all_accounts_subject(), None);
        Self { store, stream, names, partitions: Partitions::all(partitions), consumer: "rebuild".into(), telemetry }
    }

    /// Its telemetry.
    pub fn telemetry(&self) -> &ProjectionTelemetry {
        &self.telemetry
    }

    /// The read store.
    pub fn store(&self) -> &ReadStore {
        &self.store
    }

    /// The partition an event on `subject` belongs to (an event without an
    /// account subject: partition 0, which sets it aside).
    fn partition_of(&self, subject: &str) -> u32 {
        account_of_subject(subject, &self.names.subject_prefix)
            .map_or(0, |account_id| read_model::partition_of(account_id, self.partitions.count))
    }

    /// Applies `messages` (in log order) to `projections` in one
    /// transaction. Every event moves the owned partitions' checkpoints;
    /// only those of their accounts change rows. The events' spans start
    /// before the writes (each row records the span that wrote it) and end,
    /// with the metrics, after the commit.
    pub async fn apply(&self, messages: &[Delivered], projections: &[Projection]) -> Result<BatchReport, StoreError> {
        let started = std::time::SystemTime::now();
        let mut batch = self.store.begin(&self.partitions.owned, self.partitions.count).await?;

        // Which events to handle, for which projections (the log answers
        // the rare question of a gap).
        let arrivals: Vec<Arrival> = messages
            .iter()
            .map(|message| Arrival { position: message.position, partition: self.partition_of(&message.subject) })
            .collect();
        let mut empty = HashMap::new();
        let (due, checkpoints, gap) = loop {
            match batch::order(&arrivals, batch.checkpoints(), projections, &empty) {
                Order::Decided(Decided { due, checkpoints, gap }) => break (due, checkpoints, gap),
                Order::AskGap { from, to } => {
                    empty.insert((from, to), self.nothing_between(from, to).await);
                }
            }
        };
        for (partition, positions) in &checkpoints {
            for projection in projections {
                batch.advance(*projection, *partition, positions.get(*projection));
            }
        }
        let mut report = BatchReport { handled: due.len(), gap, ..BatchReport::default() };

        // What the due events say, and the rows they fold onto.
        let handled: Vec<(&Delivered, Vec<Projection>)> =
            messages.iter().zip(due).filter_map(|(message, due)| due.map(|due| (message, due))).collect();
        let mut to_fold = Vec::new();
        for (message, due) in &handled {
            if due.is_empty() {
                continue;
            }
            let record = EventRecord::read(
                message.position,
                &message.subject,
                &self.names.subject_prefix,
                |name| message.header(name),
                &message.payload,
            )
            .map_err(|error| error.to_string());
            to_fold.push((due.clone(), record));
        }
        let mut rows = batch::Rows::default();
        let summary_ids = batch::accounts_due(&to_fold, Projection::AccountSummary);
        rows.summaries = summary_ids.iter().map(|id| (id.clone(), None)).collect();
        for row in batch.accounts(&summary_ids).await? {
            rows.summaries.insert(row.account_id.clone(), Some(row));
        }
        let history_ids = batch::accounts_due(&to_fold, Projection::AccountHistory);
        rows.histories = history_ids.iter().map(|id| (id.clone(), None)).collect();
        for row in batch.last_histories(&history_ids).await? {
            rows.histories.insert(row.account_id.clone(), Some(row));
        }
        let mut folded = batch::fold(&to_fold, rows);

        // Dead letters and telemetry, in log order.
        let mut outcomes = std::mem::take(&mut folded.outcomes).into_iter();
        let mut records = to_fold.into_iter();
        for (message, due) in handled {
            let mut event = Handled {
                position: message.position,
                subject: message.subject.clone(),
                event_type: message.header(headers::TYPE).map(str::to_owned),
                account_id: None,
                occurred_at_us: None,
                producer: propagation::extract_from_nats(&message.headers),
                outcomes: Vec::new(),
            };
            let outcome = if due.is_empty() {
                Outcome::DuplicateSkipped
            } else {
                if let Some((_, Ok(record))) = records.next() {
                    event.account_id = Some(record.account_id);
                    event.occurred_at_us = Some(record.occurred_at_us);
                }
                match outcomes.next() {
                    Some(Err(reason)) => {
                        batch.dead_letter(&dead_letter(message, &reason)).await?;
                        tracing::warn!(position = message.position, subject = %message.subject, %reason, "event set aside as a dead letter");
                        Outcome::Failed(reason)
                    }
                    _ => Outcome::Applied,
                }
            };
            event.outcomes = projections
                .iter()
                .map(|p| (*p, if due.contains(p) { outcome.clone() } else { Outcome::DuplicateSkipped }))
                .collect();
            report.events.push(event);
        }

        // Every row records when it was written and by which span.
        let spans: Vec<EventSpans> =
            report.events.iter().map(|handled| self.telemetry.start(handled, started)).collect();
        let mut traces = HashMap::new();
        for (handled, spans) in report.events.iter().zip(&spans) {
            for projection in projections {
                if let Some(traceparent) = spans.context(*projection).and_then(propagation::to_traceparent) {
                    traces.insert((*projection, handled.position), traceparent);
                }
            }
        }
        folded.stamp(now_us(), &traces);

        batch.upsert_accounts(&folded.summaries).await?;
        batch.insert_history(&folded.history).await?;
        report.checkpoints = Checkpoints::lowest(batch.checkpoints().values());
        batch.commit().await?;

        self.telemetry.set_checkpoints(report.checkpoints);
        for (handled, spans) in report.events.iter().zip(spans) {
            self.telemetry.finish(handled, spans);
        }
        Ok(report)
    }

    /// Whether the log holds no account event in `from..to` (a legitimate
    /// gap, e.g. in a stream that also holds other subjects).
    async fn nothing_between(&self, from: u64, to: u64) -> bool {
        match self.stream.direct_get_next_for_subject(self.names.all_accounts_subject(), Some(from)).await {
            Ok(next) => next.sequence >= to,
            Err(error) => {
                tracing::debug!(%error, from, to, "cannot check a gap in the log; repositioning");
                false
            }
        }
    }

    /// Consumes the event log until `shutdown` completes, then finishes the
    /// batch in hand and returns.
    pub async fn run(
        self: Arc<Self>,
        config: &Config,
        health: HealthReporter,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProjectorError> {
        let mut shutdown = pin!(shutdown.fuse());
        let mut backoff = Backoff::default();
        let _staleness = AbortOnDrop(tokio::spawn(Arc::clone(&self).watch_staleness()));
        loop {
            // (Re)position: the read store's checkpoints are the truth.
            let consumer = tokio::select! {
                () = &mut shutdown => return Ok(()),
                consumer = self.position_consumer(config) => consumer,
            };
            let messages = match consumer {
                Ok(messages) => {
                    backoff.reset();
                    set_health(&health, ServingStatus::Serving).await;
                    messages
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff.current(), "cannot position the consumer");
                    set_health(&health, ServingStatus::NotServing).await;
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = backoff.wait() => continue,
                    }
                }
            };
            let mut batches = pin!(consumer::arrived(messages, config.batch_size.get()));
            loop {
                let next = tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    next = batches.next() => next,
                };
                let batch = match next {
                    Some(Ok(batch)) => batch,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "the consumer's message stream failed; repositioning");
                        set_health(&health, ServingStatus::NotServing).await;
                        break;
                    }
                    None => break,
                };
                let delivered: Vec<Delivered> = batch.iter().map(Delivered::from_message).collect::<Result<_, _>>()?;
                let mut failed = false;
                let report = loop {
                    match self.apply(&delivered, &Projection::ALL).await {
                        Ok(report) => break report,
                        Err(error) => {
                            tracing::warn!(%error, retry_in = ?backoff.current(), "applying a batch failed; retrying it");
                            set_health(&health, ServingStatus::NotServing).await;
                            failed = true;
                            // Keep JetStream from redelivering while we retry.
                            for message in &batch {
                                let _ = message.ack_with(AckKind::Progress).await;
                            }
                            backoff.wait().await;
                        }
                    }
                };
                if failed {
                    backoff.reset();
                    set_health(&health, ServingStatus::Serving).await;
                }
                // One ack for the batch: the consumer acks all before it.
                if let Some(last) = batch[..report.handled].last()
                    && let Err(error) = last.ack().await
                {
                    // Not fatal: a redelivery is skipped by the checkpoint.
                    tracing::debug!(%error, "ack failed");
                }
                if let Some(info) = batch[..report.handled].last().and_then(|m| m.info().ok()) {
                    self.telemetry.set_pending(info.pending);
                }
                if let Some(expected) = report.gap {
                    tracing::info!(expected, "the consumer skipped ahead of a projection; repositioning");
                    break;
                }
            }
        }
    }

    /// Every [`STALENESS_PERIOD`], measures how old the oldest unapplied
    /// event is: the log's next account event after what every projection
    /// has applied at least once (history a rebuild reset and is replaying
    /// is progress, not staleness: see `ProjectionTelemetry::applied`).
    /// Runs beside the consumer, so it keeps measuring while a batch is
    /// stuck (read store down, a stalled consumer): that is when the lag of
    /// applied events says nothing.
    async fn watch_staleness(self: Arc<Self>) {
        let mut tick = tokio::time::interval(STALENESS_PERIOD);
        loop {
            tick.tick().await;
            // Unknown until the checkpoints were read.
            let Some(applied) = self.telemetry.applied() else { continue };
            let subject = self.names.all_accounts_subject();
            match self.stream.direct_get_next_for_subject(subject, Some(applied + 1)).await {
                Ok(next) => {
                    let produced = std::time::SystemTime::from(next.time);
                    self.telemetry.set_staleness(produced.elapsed().unwrap_or_default());
                }
                Err(error) if matches!(error.kind(), DirectGetErrorKind::NotFound) => {
                    self.telemetry.set_staleness(Duration::ZERO);
                }
                Err(error) => tracing::debug!(%error, "cannot measure the staleness"),
            }
        }
    }
}

fn dead_letter(message: &Delivered, reason: &str) -> DeadLetter {
    let headers = message
        .headers
        .iter()
        .flat_map(|(name, values)| values.iter().map(move |value| format!("{name}: {}", value.as_str())))
        .collect::<Vec<_>>()
        .join("\n");
    DeadLetter {
        position: message.position,
        subject: message.subject.clone(),
        event_type: message.header(headers::TYPE).map(str::to_owned),
        reason: reason.to_owned(),
        headers,
        payload: message.payload.to_vec(),
        dead_lettered_at_us: now_us(),
    }
}

/// Now, in µs since the epoch (the read model's unit of time).
fn now_us() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000
}

/// The durable consumer of partition `index` of `count`: `base` itself
/// when the read model is one partition (the name deployments already
/// have), `<base>-<index>-of-<count>` otherwise, so that a layout change
/// never resumes another layout's consumer.
pub fn consumer_name(base: &str, index: u32, count: u32) -> String {
    if count <= 1 { base.to_owned() } else { format!("{base}-{index}-of-{count}") }
}

/// How often the staleness is measured (one direct get).
const STALENESS_PERIOD: Duration = Duration::from_secs(1);

/// Aborts a background task when its owner is done.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The name health checks use for the projector.
pub const SERVICE_NAME: &str = "projector";

pub(crate) async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    shared::grpc_server::set_health(reporter, SERVICE_NAME, status).await;
}
