//! The event log as the write side uses it: creating the JetStream stream,
//! loading an account's state from its last event (or, where that cannot
//! answer, from its history), and appending one event with optimistic
//! concurrency (`Nats-Expected-Last-Subject-Sequence`) and idempotency
//! (`Nats-Msg-Id`).

use std::{collections::VecDeque, time::Duration};

use async_nats::{
    HeaderMap,
    connection::State,
    jetstream::{
        self,
        context::PublishErrorKind,
        message::PublishMessage,
        stream::{DirectGetErrorKind, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy, StorageType},
    },
};
use futures::StreamExt;
use opentelemetry::{
    Context, KeyValue, global,
    trace::{SpanKind, Status as SpanStatus, TraceContextExt, Tracer},
};
use opentelemetry_semantic_conventions::attribute as semconv;
use shared::{
    event_log::{Envelope, EnvelopeError, EventLogArgs, StoredEnvelope},
    events::AccountEvent,
    grpc_telemetry::CQRS_SIDE,
    propagation,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::watch;

use crate::{
    broker_trace::{BrokerTracing, TRACE_DEST},
    domain::{Account, AccountId, AccountStatus, CommandId},
};

/// How many of an account's most recent command ids a history replay
/// reports, for recognising retries of refused commands.
const RECENT_COMMANDS: usize = 1_000;

/// How many of an account's events one batched direct get asks for.
const LOAD_BATCH: usize = 1_000;

/// Batched direct get replies: how many matching events follow this one.
const NUM_PENDING: &str = "Nats-Num-Pending";

/// Why the event log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// The service has not reached NATS, or the stream, since it started.
    #[error("the event log is not connected yet")]
    NotReady,
    /// The NATS connection is down; the client reconnects in the background.
    #[error("the NATS connection is down")]
    Disconnected,
    /// JetStream did not answer in time. The append's outcome is unknown.
    #[error("JetStream did not answer within {0:?}")]
    TimedOut(Duration),
    /// The NATS connection dropped while an append awaited its
    /// acknowledgement. The append's outcome is unknown.
    #[error("the NATS connection was lost before JetStream acknowledged the append")]
    ConnectionLost,
    /// Someone appended to the account since its state was loaded.
    #[error("the account's event log moved on since its state was loaded")]
    Conflict,
    /// An event in the account's log cannot be read by this version.
    #[error("the event at position {position} cannot be read: {reason}")]
    Unreadable { position: u64, reason: String },
    /// The NATS server cannot answer a batched direct get (before 2.11).
    #[error("nats-server {version} is too old: the write side loads accounts with batched direct gets (2.11 or later)")]
    ServerTooOld { version: String },
    /// The stream exists, configured otherwise than this service's settings
    /// and an event log require. The service stays NOT_SERVING (retrying)
    /// until someone changes the stream or the settings.
    #[error(
        "stream {stream} is not what this write-service needs: {}. Change the stream (`nats stream edit {stream}` …) \
         or the settings; until they agree the service stays NOT_SERVING",
        problems.join("; ")
    )]
    StreamMismatch { stream: String, problems: Vec<String> },
    /// Any other JetStream failure. The append's outcome is unknown.
    #[error("JetStream could not {what}: {source}")]
    Request { what: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
}

/// `what` failed for `source`, a JetStream or NATS error (or a
/// description of an answer that makes no sense), kept as the cause.
pub(crate) fn failed(what: &'static str, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> EventLogError {
    EventLogError::Request { what, source: source.into() }
}

impl EventLogError {
    /// What a client may be told: fixed words, never a server's own text.
    pub fn summary(&self) -> &'static str {
        match self {
            Self::NotReady => "not connected yet",
            Self::Disconnected => "the NATS connection is down",
            Self::TimedOut(_) => "JetStream did not answer in time",
            Self::ConnectionLost => "the NATS connection was lost before JetStream acknowledged the append",
            Self::Conflict => "the account moved on during the command",
            Self::Unreadable { .. } => "an event of the account cannot be read",
            Self::ServerTooOld { .. } => "the NATS server is too old for this service",
            Self::StreamMismatch { .. } => "the event stream is configured otherwise than this service needs",
            Self::Request { .. } => "JetStream could not take the request, e.g. while it elects a stream leader",
        }
    }
}

/// The stream an event log is: every event kept, appends checked per
/// subject, loads by direct get.
fn stream_config(names: &EventLogArgs, settings: &StreamSettings) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: names.stream.clone(),
        description: Some("Bank account events: the system of record. Never deleted.".into()),
        subjects: vec![names.all_accounts_subject()],
        storage: StorageType::File,
        num_replicas: settings.replicas,
        retention: RetentionPolicy::Limits,
        // An event log keeps everything: no count, size or age limit...
        max_messages: -1,
        max_bytes: -1,
        max_age: Duration::ZERO,
        max_messages_per_subject: -1,
        // ...and should one ever be set, refuse new events rather than
        // silently dropping the oldest (JetStream's default).
        discard: DiscardPolicy::New,
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        allow_direct: true,
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    }
}

/// How an existing stream differs from `wanted` where it matters: the
/// replicas the settings ask for, the subjects, and what keeps every event
/// (no limit, no delete or purge, direct gets for loads, discard new).
fn mismatches(existing: &jetstream::stream::Config, wanted: &jetstream::stream::Config) -> Vec<String> {
    let mut problems = Vec::new();
    if existing.num_replicas != wanted.num_replicas {
        problems.push(format!(
            "it has {} replica(s), EVENT_STREAM_REPLICAS is {}",
            existing.num_replicas, wanted.num_replicas
        ));
    }
    for subject in &wanted.subjects {
        let prefix = subject.trim_end_matches(".account.*");
        if !existing.subjects.iter().any(|s| s == subject || s == ">" || *s == format!("{prefix}.>")) {
            problems.push(format!("it does not capture {subject} (it captures {:?})", existing.subjects));
        }
    }
    let limits = [
        ("max_msgs", existing.max_messages != -1),
        ("max_bytes", existing.max_bytes != -1),
        ("max_age", existing.max_age != Duration::ZERO),
        ("max_msgs_per_subject", existing.max_messages_per_subject != -1),
    ];
    let limited: Vec<&str> = limits.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect();
    if !limited.is_empty() {
        problems.push(format!("it has limits that would drop events ({})", limited.join(", ")));
    }
    let must = [
        ("deny_delete", existing.deny_delete),
        ("deny_purge", existing.deny_purge),
        ("allow_direct", existing.allow_direct),
        ("discard: new", existing.discard == DiscardPolicy::New),
    ];
    let missing: Vec<&str> = must.iter().filter(|(_, set)| !*set).map(|(name, _)| *name).collect();
    if !missing.is_empty() {
        problems.push(format!("it lacks {}", missing.join(", ")));
    }
    problems
}

/// How the write side creates the stream when it does not exist yet.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Replicas of every event (3 on a 3-node cluster).
    pub replicas: usize,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop duplicates.
    pub duplicate_window: Duration,
}

/// Which copy of the stream a read asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Any replica (direct get): spread over the cluster, but a follower
    /// may not have the latest events yet. Good for a first load: a stale
    /// state only costs a conflict.
    AnyReplica,
    /// The stream leader: what an append is checked against. After a
    /// conflict, so that the retry is not decided on the same stale state
    /// again (after a leader change a follower can lag for seconds).
    Leader,
}

/// An account's state as of its last event in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedAccount {
    /// The state folded from the events.
    pub account: Account,
    /// The stream sequence of the account's last event; 0 if it has none.
    pub position: u64,
    /// Whether the account's recent commands were read with it (a history
    /// replay), or only its last event's (a snapshot load).
    pub history_read: bool,
}

/// A command that already produced an event in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCommand {
    /// The command's idempotency key.
    pub command_id: String,
    /// The account's version after the command's event.
    pub version: u64,
    /// The event's stream sequence.
    pub position: u64,
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The event is durable at `position`.
    New { position: u64 },
    /// JetStream had already stored this command's event (same
    /// `Nats-Msg-Id` within the duplicate window); nothing was appended.
    Duplicate { position: u64, version: u64 },
}

/// The JetStream stream that holds every account's events.
pub struct EventLog {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream: jetstream::stream::Stream,
    names: EventLogArgs,
    timeout: Duration,
    tracer: global::BoxedTracer,
    publish_span_name: String,
    subject_template: String,
    direct_get_subject: String,
    source: &'static str,
    /// Counts the client's disconnects (fed by its event callback), if
    /// known: see [`Self::failing_appends_on`].
    disconnects: Option<watch::Receiver<u64>>,
    /// Which appends ask the servers for a trace report (off: `None`).
    broker_tracing: Option<BrokerTracing>,
}

impl EventLog {
    /// Opens the event log, creating its stream if it does not exist.
    pub async fn open(
        client: async_nats::Client,
        names: EventLogArgs,
        settings: &StreamSettings,
        timeout: Duration,
    ) -> Result<Self, EventLogError> {
        // The server's version is known once its INFO arrived (a client
        // that retries its initial connect returns before that).
        let connecting = tokio::time::Instant::now();
        while client.connection_state() != State::Connected {
            if connecting.elapsed() >= timeout {
                return Err(EventLogError::Disconnected);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let version = client.server_info().version;
        if !supports_batched_direct_get(&version) {
            return Err(EventLogError::ServerTooOld { version });
        }
        let jetstream = jetstream::ContextBuilder::new().timeout(timeout).build(client.clone());
        let config = stream_config(&names, settings);
        let mut stream =
            jetstream.get_or_create_stream(config.clone()).await.map_err(|e| failed("create or find the stream", e))?;
        let info = stream.info().await.map_err(|e| failed("describe the stream", e))?;
        let problems = mismatches(&info.config, &config);
        if !problems.is_empty() {
            return Err(EventLogError::StreamMismatch { stream: names.stream.clone(), problems });
        }
        let wanted = names.all_accounts_subject();
        Ok(Self {
            client,
            jetstream,
            stream,
            publish_span_name: format!("publish {wanted}"),
            direct_get_subject: format!("$JS.API.DIRECT.GET.{}", names.stream),
            subject_template: wanted,
            names,
            timeout,
            tracer: global::tracer("write-service"),
            source: "write-service",
            disconnects: None,
            broker_tracing: None,
        })
    }

    /// Makes an append in flight fail as soon as `disconnects` (a count of
    /// the client's disconnects) moves, instead of when
    /// `NATS_REQUEST_TIMEOUT` passes: its acknowledgement can never arrive
    /// on the new connection, and the client's retry, with the same
    /// `command_id`, lands on a live server at once (docs/scaling.md).
    pub fn failing_appends_on(mut self, disconnects: watch::Receiver<u64>) -> Self {
        self.disconnects = Some(disconnects);
        self
    }

    /// Asks the servers to report on the appends `tracing` draws (the
    /// broker hop in their traces: [`crate::broker_trace`]).
    pub fn tracing_the_broker(mut self, tracing: Option<BrokerTracing>) -> Self {
        self.broker_tracing = tracing;
        self
    }

    /// Whether the event stream captures `subject` (an existing stream may
    /// capture more than the account subjects: `<prefix>.>`, `>`).
    pub fn captures(&self, subject: &str) -> bool {
        self.stream.cached_info().config.subjects.iter().any(|pattern| subject_matches(pattern, subject))
    }

    /// Whether the NATS connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn ensure_connected(&self) -> Result<(), EventLogError> {
        if self.is_connected() { Ok(()) } else { Err(EventLogError::Disconnected) }
    }

    /// Account `id`'s state, from its last event alone: the envelope
    /// carries the version and the balance after it, and its type says
    /// whether the account is closed. One indexed read, whatever the length
    /// of the account's history or of the log (docs/adr/0001). Also reports
    /// the last event's command, so a retry of it is recognised. An
    /// account whose last event predates the balance header is replayed.
    pub async fn load(
        &self,
        id: &AccountId,
        from: ReadFrom,
    ) -> Result<(LoadedAccount, Vec<RecordedCommand>), EventLogError> {
        self.ensure_connected()?;
        let subject = self.names.account_subject(id.as_str());
        let last = match from {
            ReadFrom::AnyReplica => {
                match self.within_timeout(self.stream.direct_get_last_for_subject(subject)).await? {
                    Ok(message) => message,
                    Err(error) if matches!(error.kind(), DirectGetErrorKind::NotFound) => {
                        return Ok((LoadedAccount::default(), Vec::new()));
                    }
                    Err(error) => return Err(failed("read an account's last event", error)),
                }
            }
            ReadFrom::Leader => {
                match self.within_timeout(self.stream.get_last_raw_message_by_subject(&subject)).await? {
                    Ok(message) => message,
                    Err(error) if matches!(error.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                        return Ok((LoadedAccount::default(), Vec::new()));
                    }
                    Err(error) => return Err(failed("read an account's last event from the leader", error)),
                }
            }
        };
        let envelope = StoredEnvelope::of(&last.headers);
        let Some(balance) = envelope.balance() else {
            return self.load_history(id).await;
        };
        let position = last.sequence;
        let unreadable = |error: EnvelopeError| EventLogError::Unreadable { position, reason: error.to_string() };
        let version = envelope.version().map_err(unreadable)?;
        let balance = balance.map_err(unreadable)?;
        let closed = envelope.event_type() == Some(AccountEvent::Closed.type_name());
        let account =
            Account { version, balance, status: if closed { AccountStatus::Closed } else { AccountStatus::Open } };
        let commands = envelope
            .command_id()
            .map(|command_id| RecordedCommand { command_id: command_id.to_owned(), version, position })
            .into_iter()
            .collect();
        Ok((LoadedAccount { account, position, history_read: false }, commands))
    }

    /// Folds all of account `id`'s events into its state, and reports its
    /// most recent commands (the last [`RECENT_COMMANDS`]), so retries of
    /// any of them are recognised.
    ///
    /// Costly on a long log: NATS finds each of the account's events by
    /// scanning the messages between it and the previous one. Used only
    /// where the last event cannot answer: a refused command that may be
    /// a retry, and events that predate the balance header. One batched
    /// direct get per [`LOAD_BATCH`] events (nats-server 2.11+): unlike a
    /// consumer it leaves nothing on the server.
    pub async fn load_history(&self, id: &AccountId) -> Result<(LoadedAccount, Vec<RecordedCommand>), EventLogError> {
        self.ensure_connected()?;
        let subject = self.names.account_subject(id.as_str());
        let mut replay = Replay { account_id: id.as_str().to_owned(), ..Replay::default() };
        loop {
            let request = serde_json::json!({
                "seq": replay.loaded.position + 1,
                "next_by_subj": subject,
                "batch": LOAD_BATCH,
            });
            let more = self.within_timeout(self.read_batch(request.to_string(), &mut replay)).await??;
            if !more {
                return Ok(replay.finish());
            }
        }
    }

    /// Sends one batched direct get and folds its replies into `replay`.
    /// Returns whether the log holds more of the account's events.
    async fn read_batch(&self, request: String, replay: &mut Replay) -> Result<bool, EventLogError> {
        let inbox = self.client.new_inbox();
        let mut replies =
            self.client.subscribe(inbox.clone()).await.map_err(|e| failed("subscribe for a batched direct get", e))?;
        self.client
            .publish_with_reply(self.direct_get_subject.clone(), inbox, request.into())
            .await
            .map_err(|e| failed("send a batched direct get", e))?;
        let mut first = true;
        while let Some(message) = replies.next().await {
            match message.status.map(u16::from) {
                None | Some(200) => {
                    let headers = message.headers.unwrap_or_default();
                    // Servers before 2.11 ignore `batch` and answer with one
                    // message without this header: folding on would lose events.
                    if first && headers.get(NUM_PENDING).is_none() {
                        return Err(EventLogError::ServerTooOld { version: self.client.server_info().version });
                    }
                    first = false;
                    let position = header(&headers, async_nats::header::NATS_SEQUENCE.as_ref())
                        .and_then(|sequence| sequence.parse().ok())
                        .ok_or_else(|| failed("read an account's history", "a direct get reply has no sequence"))?;
                    replay.fold(&headers, &message.payload, position)?;
                }
                // End of batch: how many of the account's events are left.
                Some(204) => {
                    let pending = message.headers.as_ref().and_then(|h| header(h, NUM_PENDING)).unwrap_or("0");
                    return Ok(pending != "0");
                }
                // No (more) events on the subject.
                Some(404) => return Ok(false),
                Some(status) => {
                    let description = message.description.unwrap_or_default();
                    return Err(failed(
                        "read an account's history",
                        format!("direct get answered {status} {description}"),
                    ));
                }
            }
        }
        Err(EventLogError::Disconnected)
    }

    /// Appends `event`, which takes account `id` to the state `after`, if
    /// and only if the account's last event is still at `expected_position`.
    /// Returns once JetStream has acknowledged it: the event is durable.
    pub async fn append(
        &self,
        id: &AccountId,
        expected_position: u64,
        after: &Account,
        event: &AccountEvent,
        command_id: Option<&CommandId>,
    ) -> Result<Appended, EventLogError> {
        self.ensure_connected()?;
        let subject = self.names.account_subject(id.as_str());
        let event_id = uuid::Uuid::new_v4().to_string();
        let span = self
            .tracer
            .span_builder(self.publish_span_name.clone())
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new(semconv::MESSAGING_SYSTEM, "nats"),
                KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, subject.clone()),
                KeyValue::new(semconv::MESSAGING_DESTINATION_TEMPLATE, self.subject_template.clone()),
                KeyValue::new(semconv::MESSAGING_OPERATION_NAME, "publish"),
                KeyValue::new(semconv::MESSAGING_OPERATION_TYPE, "send"),
                KeyValue::new(semconv::MESSAGING_MESSAGE_ID, event_id.clone()),
                KeyValue::new(CQRS_SIDE, "write"),
            ])
            .start(&self.tracer);
        let cx = Context::current_with_span(span);

        let time = now_rfc3339();
        let envelope = Envelope {
            event_id: &event_id,
            source: self.source,
            event_type: event.type_name(),
            time: &time,
            account_id: id.as_str(),
            version: after.version,
            balance: after.balance,
            command_id: command_id.map(CommandId::as_str),
        };
        let mut message_headers = envelope.headers();
        // The event carries the PRODUCER span's context: consumers link to it.
        propagation::inject_into_nats(&cx, &mut message_headers);
        if let Some(dest) = self.broker_tracing.as_ref().and_then(|t| t.dest_for(cx.span().span_context())) {
            message_headers.insert(TRACE_DEST, dest);
        }
        let message_id = envelope.message_id();
        let publish = PublishMessage::build()
            .payload(event.encode(id.as_str()).into())
            .headers(message_headers)
            .message_id(message_id)
            .expected_last_subject_sequence(expected_position);

        let result = self.publish(subject, publish).await;
        let span = cx.span();
        let outcome = match result {
            Ok(ack) if ack.duplicate => {
                span.set_attribute(KeyValue::new("messaging.nats.duplicate", true));
                self.recorded_version(ack.sequence)
                    .await
                    .map(|version| Appended::Duplicate { position: ack.sequence, version })
            }
            Ok(ack) => Ok(Appended::New { position: ack.sequence }),
            Err(error) => Err(error),
        };
        match &outcome {
            Ok(Appended::New { position } | Appended::Duplicate { position, .. }) => {
                span.set_attribute(KeyValue::new("messaging.nats.stream.sequence", *position as i64));
            }
            Err(error) => {
                span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type(error)));
                span.set_status(SpanStatus::error(error.to_string()));
            }
        }
        span.end();
        outcome
    }

    async fn publish(
        &self,
        subject: String,
        publish: PublishMessage,
    ) -> Result<jetstream::publish::PublishAck, EventLogError> {
        let to_error = |error: jetstream::context::PublishError| match error.kind() {
            PublishErrorKind::WrongLastSequence => EventLogError::Conflict,
            PublishErrorKind::TimedOut => EventLogError::TimedOut(self.timeout),
            PublishErrorKind::BrokenPipe => EventLogError::Disconnected,
            _ => failed("append the event", error),
        };
        let mut disconnects = self.disconnects.clone();
        if let Some(disconnects) = &mut disconnects {
            disconnects.mark_unchanged();
        }
        let ack = self.jetstream.send_publish(subject, publish).await.map_err(to_error)?;
        let lost = async {
            let changed = match &mut disconnects {
                Some(disconnects) => disconnects.changed().await.is_ok(),
                None => false,
            };
            if !changed {
                // Not watched, or its sender is gone: only the timeout applies.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            ack = ack => ack.map_err(to_error),
            () = lost => Err(EventLogError::ConnectionLost),
        }
    }

    /// The version recorded with the event at `position`.
    async fn recorded_version(&self, position: u64) -> Result<u64, EventLogError> {
        let message = self
            .within_timeout(self.stream.direct_get(position))
            .await?
            .map_err(|e| failed("read the event at a position", e))?;
        StoredEnvelope::of(&message.headers)
            .version()
            .map_err(|error| EventLogError::Unreadable { position, reason: error.to_string() })
    }

    async fn within_timeout<T>(&self, future: impl Future<Output = T>) -> Result<T, EventLogError> {
        tokio::time::timeout(self.timeout, future).await.map_err(|_| EventLogError::TimedOut(self.timeout))
    }
}

/// Folds events into a state while remembering recent command ids.
#[derive(Default)]
struct Replay {
    /// The account replayed: every event's payload must be its.
    account_id: String,
    loaded: LoadedAccount,
    commands: VecDeque<RecordedCommand>,
}

impl Replay {
    fn fold(&mut self, message_headers: &HeaderMap, payload: &[u8], position: u64) -> Result<(), EventLogError> {
        let envelope = StoredEnvelope::of(message_headers);
        let event = AccountEvent::decode(envelope.event_type(), &self.account_id, payload)
            .map_err(|e| EventLogError::Unreadable { position, reason: e.to_string() })?;
        self.loaded.account.apply(&event);
        self.loaded.position = position;
        if let Some(command_id) = envelope.command_id() {
            if self.commands.len() == RECENT_COMMANDS {
                self.commands.pop_front();
            }
            self.commands.push_back(RecordedCommand {
                command_id: command_id.to_owned(),
                version: self.loaded.account.version,
                position,
            });
        }
        Ok(())
    }

    fn finish(mut self) -> (LoadedAccount, Vec<RecordedCommand>) {
        self.loaded.history_read = true;
        (self.loaded, self.commands.into())
    }
}

fn header<'a>(message_headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    message_headers.get(name).map(|value| value.as_str())
}

/// Whether the NATS subject `pattern` (`*` one token, `>` the rest)
/// matches `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (token, Some(other)) if token == other => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Whether nats-server `version` (`2.15.1`, `2.11.0-RC.1`) answers
/// batched direct gets: 2.11 or later.
fn supports_batched_direct_get(version: &str) -> bool {
    let mut parts = version.split(['.', '-']).map(|part| part.parse::<u64>().ok());
    matches!((parts.next().flatten(), parts.next().flatten()), (Some(major), Some(minor)) if (major, minor) >= (2, 11))
}

fn now_rfc3339() -> String {
    // Formatting a UTC timestamp as RFC 3339 cannot fail for years 0-9999.
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

/// A low-cardinality name for an event-log failure (`error.type`).
pub fn error_type(error: &EventLogError) -> &'static str {
    match error {
        EventLogError::NotReady => "not_ready",
        EventLogError::Disconnected => "disconnected",
        EventLogError::TimedOut(_) => "timeout",
        EventLogError::ConnectionLost => "connection_lost",
        EventLogError::Conflict => "conflict",
        EventLogError::Unreadable { .. } => "unreadable_event",
        EventLogError::ServerTooOld { .. } => "server_too_old",
        EventLogError::StreamMismatch { .. } => "stream_mismatch",
        EventLogError::Request { .. } => "request_failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_as_nats_matches_them() {
        assert!(subject_matches("bank.account.*", "bank.account.acc-1"));
        assert!(!subject_matches("bank.account.*", "bank.trace.x"));
        assert!(subject_matches("bank.>", "bank.trace.x"));
        assert!(subject_matches(">", "bank.trace.x"));
        assert!(!subject_matches("bank.account.*", "bank.account.a.b"));
        assert!(!subject_matches("bank.account.acc-1", "bank.account"));
    }

    #[test]
    fn an_existing_stream_must_match_the_settings_and_keep_every_event() {
        let names = EventLogArgs { stream: "BANK_EVENTS".into(), subject_prefix: "bank".into() };
        let settings = |replicas| StreamSettings { replicas, duplicate_window: Duration::from_secs(120) };
        let wanted = stream_config(&names, &settings(3));
        assert!(mismatches(&wanted, &wanted).is_empty());
        let wider = jetstream::stream::Config { subjects: vec!["bank.>".into()], ..wanted.clone() };
        assert!(mismatches(&wider, &wanted).is_empty());

        let r1 = stream_config(&names, &settings(1));
        assert_eq!(mismatches(&r1, &wanted), ["it has 1 replica(s), EVENT_STREAM_REPLICAS is 3"]);
        let careless = jetstream::stream::Config {
            max_age: Duration::from_secs(86_400),
            max_messages: 1_000,
            deny_purge: false,
            discard: DiscardPolicy::Old,
            subjects: vec!["other.>".into()],
            ..wanted.clone()
        };
        assert_eq!(
            mismatches(&careless, &wanted),
            [
                "it does not capture bank.account.* (it captures [\"other.>\"])",
                "it has limits that would drop events (max_msgs, max_age)",
                "it lacks deny_purge, discard: new",
            ]
        );
    }

    #[test]
    fn batched_direct_gets_need_nats_server_2_11() {
        for old in ["2.9.10", "2.10.24", "1.4.1", "", "garbage"] {
            assert!(!supports_batched_direct_get(old), "{old}");
        }
        for new in ["2.11.0", "2.11.0-RC.1", "2.15.1", "3.0.0"] {
            assert!(supports_batched_direct_get(new), "{new}");
        }
    }
}
