//! The event log as the write side uses it: creating the JetStream stream,
//! loading an account's state from its events, and appending one event with
//! optimistic concurrency (`Nats-Expected-Last-Subject-Sequence`) and
//! idempotency (`Nats-Msg-Id`).

use std::{collections::VecDeque, time::Duration};

use async_nats::{
    HeaderMap,
    connection::State,
    jetstream::{
        self,
        consumer::{DeliverPolicy, pull::OrderedConfig},
        context::PublishErrorKind,
        message::PublishMessage,
        stream::{DirectGetErrorKind, DiscardPolicy, RetentionPolicy, StorageType},
    },
};
use futures::StreamExt;
use opentelemetry::{
    Context, KeyValue, global,
    trace::{SpanKind, Status as SpanStatus, TraceContextExt, Tracer},
};
use opentelemetry_semantic_conventions::attribute as semconv;
use shared::{
    event_log::{EventLogArgs, headers},
    events::AccountEvent,
    grpc_telemetry::CQRS_SIDE,
    propagation,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::domain::{Account, AccountId, CommandId};

/// How many of an account's most recent command ids a load reports, for
/// recognising retries (older ones are still caught by JetStream's
/// duplicate window).
const RECENT_COMMANDS: usize = 1_000;

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
    /// Someone appended to the account since its state was loaded.
    #[error("the account's event log moved on since its state was loaded")]
    Conflict,
    /// An event in the account's log cannot be read by this version.
    #[error("the event at position {position} cannot be read: {reason}")]
    Unreadable { position: u64, reason: String },
    /// Any other JetStream failure. The append's outcome is unknown.
    #[error("JetStream request failed: {0}")]
    Request(String),
}

/// How the write side creates the stream when it does not exist yet.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Replicas of every event (3 on a 3-node cluster).
    pub replicas: usize,
    /// How long JetStream remembers a `Nats-Msg-Id` to drop duplicates.
    pub duplicate_window: Duration,
}

/// An account's state as of its last event in the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedAccount {
    /// The state folded from the events.
    pub account: Account,
    /// The stream sequence of the account's last event; 0 if it has none.
    pub position: u64,
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
    source: &'static str,
}

impl EventLog {
    /// Opens the event log, creating its stream if it does not exist.
    pub async fn open(
        client: async_nats::Client,
        names: EventLogArgs,
        settings: &StreamSettings,
        timeout: Duration,
    ) -> Result<Self, EventLogError> {
        let jetstream = jetstream::ContextBuilder::new().timeout(timeout).build(client.clone());
        let config = jetstream::stream::Config {
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
        };
        let mut stream =
            jetstream.get_or_create_stream(config).await.map_err(|e| EventLogError::Request(e.to_string()))?;
        let info = stream.info().await.map_err(|e| EventLogError::Request(e.to_string()))?;
        let wanted = names.all_accounts_subject();
        if !info.config.subjects.iter().any(|s| s == &wanted || s == ">" || s == &format!("{}.>", names.subject_prefix))
        {
            return Err(EventLogError::Request(format!(
                "stream {} exists but does not capture {wanted} (it captures {:?})",
                names.stream, info.config.subjects
            )));
        }
        if !(info.config.deny_delete && info.config.deny_purge && info.config.allow_direct)
            || info.config.discard != DiscardPolicy::New
        {
            tracing::warn!(
                stream = %names.stream,
                "the existing stream is not configured as an event log must be \
                 (deny_delete, deny_purge, allow_direct, discard=new); events may be lost"
            );
        }
        Ok(Self {
            client,
            jetstream,
            stream,
            publish_span_name: format!("publish {wanted}"),
            subject_template: wanted,
            names,
            timeout,
            tracer: global::tracer("write-service"),
            source: "write-service",
        })
    }

    /// Whether the NATS connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    fn ensure_connected(&self) -> Result<(), EventLogError> {
        if self.is_connected() { Ok(()) } else { Err(EventLogError::Disconnected) }
    }

    /// Folds account `id`'s events into its state. Also reports the most
    /// recent commands found on the way, so retries can be recognised.
    pub async fn load(&self, id: &AccountId) -> Result<(LoadedAccount, Vec<RecordedCommand>), EventLogError> {
        self.ensure_connected()?;
        let subject = self.names.account_subject(id.as_str());
        // The last event tells where the replay ends, and whether there is
        // anything to replay at all (a new account has no events).
        let last = match self.within_timeout(self.stream.direct_get_last_for_subject(subject.clone())).await? {
            Ok(message) => message,
            Err(error) if matches!(error.kind(), DirectGetErrorKind::NotFound) => {
                return Ok((LoadedAccount::default(), Vec::new()));
            }
            Err(error) => return Err(EventLogError::Request(error.to_string())),
        };
        let mut replay = Replay::default();
        if header(&last.headers, headers::AGGREGATE_VERSION) == Some("1") {
            // A one-event account (just opened): no consumer needed.
            replay.fold(&last.headers, &last.payload, last.sequence)?;
            return Ok(replay.finish());
        }

        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                filter_subject: subject,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| EventLogError::Request(e.to_string()))?;
        let mut messages = consumer.messages().await.map_err(|e| EventLogError::Request(e.to_string()))?;
        while replay.loaded.position < last.sequence {
            let message = match self.within_timeout(messages.next()).await? {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Err(EventLogError::Request(error.to_string())),
                None => return Err(EventLogError::Request("the replay ended early".into())),
            };
            let position = message.info().map_err(|e| EventLogError::Request(e.to_string()))?.stream_sequence;
            let empty = HeaderMap::new();
            replay.fold(message.headers.as_ref().unwrap_or(&empty), &message.payload, position)?;
        }
        Ok(replay.finish())
    }

    /// Appends `event` as version `version` of account `id`, if and only if
    /// the account's last event is still at `expected_position`. Returns
    /// once JetStream has acknowledged it: the event is durable.
    pub async fn append(
        &self,
        id: &AccountId,
        expected_position: u64,
        version: u64,
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

        let mut message_headers = HeaderMap::new();
        // The event carries the PRODUCER span's context: consumers link to it.
        propagation::inject_into_nats(&cx, &mut message_headers);
        message_headers.insert(headers::SPEC_VERSION_HEADER, headers::SPEC_VERSION);
        message_headers.insert(headers::ID, event_id.as_str());
        message_headers.insert(headers::SOURCE, self.source);
        message_headers.insert(headers::TYPE, event.type_name());
        message_headers.insert(headers::TIME, now_rfc3339().as_str());
        message_headers.insert(headers::SUBJECT, id.as_str());
        message_headers.insert(headers::AGGREGATE_VERSION, version.to_string().as_str());
        message_headers.insert(headers::CONTENT_TYPE, headers::CONTENT_TYPE_PROTOBUF);
        // Dedupe per account: the same key on two accounts is two commands.
        let message_id = match command_id {
            Some(command_id) => {
                message_headers.insert(headers::COMMAND_ID, command_id.as_str());
                format!("{id}:{}", command_id.as_str())
            }
            None => event_id,
        };
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
            _ => EventLogError::Request(error.to_string()),
        };
        let ack = self.jetstream.send_publish(subject, publish).await.map_err(to_error)?;
        ack.await.map_err(to_error)
    }

    /// The version recorded with the event at `position`.
    async fn recorded_version(&self, position: u64) -> Result<u64, EventLogError> {
        let message = self
            .within_timeout(self.stream.direct_get(position))
            .await?
            .map_err(|e| EventLogError::Request(e.to_string()))?;
        header(&message.headers, headers::AGGREGATE_VERSION)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| EventLogError::Unreadable { position, reason: "no aggregate version header".into() })
    }

    async fn within_timeout<T>(&self, future: impl Future<Output = T>) -> Result<T, EventLogError> {
        tokio::time::timeout(self.timeout, future).await.map_err(|_| EventLogError::TimedOut(self.timeout))
    }
}

/// Folds events into a state while remembering recent command ids.
#[derive(Default)]
struct Replay {
    loaded: LoadedAccount,
    commands: VecDeque<RecordedCommand>,
}

impl Replay {
    fn fold(&mut self, message_headers: &HeaderMap, payload: &[u8], position: u64) -> Result<(), EventLogError> {
        let event = AccountEvent::decode(header(message_headers, headers::TYPE), payload)
            .map_err(|e| EventLogError::Unreadable { position, reason: e.to_string() })?;
        self.loaded.account.apply(&event);
        self.loaded.position = position;
        if let Some(command_id) = header(message_headers, headers::COMMAND_ID) {
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

    fn finish(self) -> (LoadedAccount, Vec<RecordedCommand>) {
        (self.loaded, self.commands.into())
    }
}

fn header<'a>(message_headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    message_headers.get(name).map(|value| value.as_str())
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
        EventLogError::Conflict => "conflict",
        EventLogError::Unreadable { .. } => "unreadable_event",
        EventLogError::Request(_) => "request_failed",
    }
}
