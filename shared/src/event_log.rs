//! Where the event log lives in NATS JetStream and what its messages carry:
//! the stream, one subject per account, and the header names. Shared by the
//! log's only writer (write-service) and its reader (projector).

use std::{path::PathBuf, time::Duration};

use crate::secrets::Secret;

/// How to reach NATS. Shared by every service that talks to it.
/// Authentication is one of: a credentials file (JWT + nkey seed, NATS's
/// decentralised auth), user and password, or a token; in the URL
/// (`nats://user:password@host`) works too. Secrets are never printed:
/// `--help` hides their values and logs show URLs through
/// [`crate::secrets::redact_url`].
#[derive(Clone, Debug, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated (`tls://` to require TLS).
    #[arg(long = "nats-url", env = "NATS_URL", default_value = "nats://127.0.0.1:4222", hide_env_values = true)]
    pub url: Secret,

    /// How long to wait for a JetStream answer (publish ack, direct get)
    /// before reporting the event log unavailable.
    #[arg(long = "nats-request-timeout", env = "NATS_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// How long a connection may stay silent before the client pings the
    /// server; three silent intervals and it leaves for another server. A
    /// frozen server (or a cut network) keeps its TCP connection open, so
    /// this is what notices it. Any traffic resets it: a busy connection
    /// never pings.
    #[arg(long = "nats-ping-interval", env = "NATS_PING_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// A NATS credentials file (`.creds`: user JWT and nkey seed).
    #[arg(long = "nats-creds-file", env = "NATS_CREDS_FILE")]
    pub creds_file: Option<PathBuf>,

    /// User name for user/password authentication (with NATS_PASSWORD).
    #[arg(long = "nats-user", env = "NATS_USER", requires = "password")]
    pub user: Option<String>,

    /// Password for user/password authentication.
    #[arg(long = "nats-password", env = "NATS_PASSWORD", hide_env_values = true, requires = "user")]
    pub password: Option<Secret>,

    /// Token for token authentication.
    #[arg(long = "nats-token", env = "NATS_TOKEN", hide_env_values = true)]
    pub token: Option<Secret>,

    /// CA certificate (PEM) to verify the NATS servers with; implies TLS.
    #[arg(long = "nats-tls-ca-file", env = "NATS_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS, with NATS_TLS_KEY_FILE.
    #[arg(long = "nats-tls-cert-file", env = "NATS_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long = "nats-tls-key-file", env = "NATS_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
}

impl NatsArgs {
    /// The URLs of `--nats-url`, one per server: async-nats reads a string
    /// as one URL, so a comma-separated list must be split first.
    pub fn servers(&self) -> Vec<&str> {
        self.url.expose().split(',').map(str::trim).filter(|url| !url.is_empty()).collect()
    }

    /// Connect options carrying this configuration's authentication and
    /// TLS, for the client named `name` (shown by the server's monitoring).
    pub async fn connect_options(&self, name: &str) -> Result<async_nats::ConnectOptions, std::io::Error> {
        let mut options = match &self.creds_file {
            Some(path) => async_nats::ConnectOptions::new().credentials_file(path).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read the NATS credentials file {}: {e}", path.display()))
            })?,
            None => async_nats::ConnectOptions::new(),
        };
        options = options.name(name).ping_interval(self.ping_interval);
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
        }
        Ok(options)
    }
}

/// The event log's names in JetStream.
#[derive(Clone, Debug, clap::Args)]
pub struct EventLogArgs {
    /// Name of the JetStream stream that holds the event log.
    #[arg(long = "event-stream", env = "EVENT_STREAM", default_value = "BANK_EVENTS")]
    pub stream: String,

    /// First tokens of the event subjects: account `X`'s events go to
    /// `<prefix>.account.X`.
    #[arg(long = "event-subject-prefix", env = "EVENT_SUBJECT_PREFIX", default_value = "bank")]
    pub subject_prefix: String,
}

impl EventLogArgs {
    /// The subject of account `account_id`'s events. The id must already be
    /// validated: it becomes the subject's last token.
    pub fn account_subject(&self, account_id: &str) -> String {
        format!("{}.account.{account_id}", self.subject_prefix)
    }

    /// The wildcard that covers every account's subject: what the stream
    /// captures and what consumers filter on.
    pub fn all_accounts_subject(&self) -> String {
        format!("{}.account.*", self.subject_prefix)
    }
}

/// The envelope of one event: everything the log's message carries besides
/// the payload and the trace context. The one place that writes the event
/// headers, for the write-service and for anything that fills a log in its
/// place (benchmarks, tests).
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// Unique id of the event (a UUID).
    pub event_id: &'a str,
    /// Who produced it (`ce-source`).
    pub source: &'a str,
    /// The event's type name (`AccountEvent::type_name`).
    pub event_type: &'static str,
    /// When it was produced, RFC 3339 in UTC.
    pub time: &'a str,
    /// The account it belongs to (a validated id: also the subject's last token).
    pub account_id: &'a str,
    /// The account's version after this event.
    pub version: u64,
    /// The account's balance after this event.
    pub balance: i64,
    /// The idempotency key of the command that produced it, if it had one.
    pub command_id: Option<&'a str>,
}

impl Envelope<'_> {
    /// The event's headers (without `traceparent`, which the producer's
    /// span adds).
    pub fn headers(&self) -> async_nats::HeaderMap {
        let mut map = async_nats::HeaderMap::new();
        map.insert(headers::SPEC_VERSION_HEADER, headers::SPEC_VERSION);
        map.insert(headers::ID, self.event_id);
        map.insert(headers::SOURCE, self.source);
        map.insert(headers::TYPE, self.event_type);
        map.insert(headers::TIME, self.time);
        map.insert(headers::SUBJECT, self.account_id);
        map.insert(headers::AGGREGATE_VERSION, self.version.to_string().as_str());
        map.insert(headers::ACCOUNT_BALANCE, self.balance.to_string().as_str());
        map.insert(headers::CONTENT_TYPE, headers::CONTENT_TYPE_PROTOBUF);
        if let Some(command_id) = self.command_id {
            map.insert(headers::COMMAND_ID, command_id);
        }
        map
    }

    /// JetStream's deduplication key (`Nats-Msg-Id`): per account, since
    /// the same `command_id` on two accounts is two commands; the event id
    /// when the command had no key.
    pub fn message_id(&self) -> String {
        match self.command_id {
            Some(command_id) => format!("{}:{command_id}", self.account_id),
            None => self.event_id.to_owned(),
        }
    }
}

/// An event's envelope as read back from the log: the one place that reads
/// what [`Envelope`] writes (the write-service loading an account, the
/// projector applying an event). `header` looks a header up by name, so
/// that readers without NATS types (the projector's domain) can use it.
#[derive(Debug, Clone, Copy)]
pub struct StoredEnvelope<F>(F);

/// A header the envelope requires is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header {name}: {problem}")]
pub struct EnvelopeError {
    /// The header.
    pub name: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl StoredEnvelope<()> {
    /// The envelope of a NATS message's headers.
    pub fn of<'a>(headers: &'a async_nats::HeaderMap) -> StoredEnvelope<impl Fn(&str) -> Option<&'a str> + Copy> {
        StoredEnvelope(move |name: &str| headers.get(name).map(|value| value.as_str()))
    }
}

impl<'a, F: Fn(&str) -> Option<&'a str>> StoredEnvelope<F> {
    /// The envelope whose headers `header` looks up.
    pub fn new(header: F) -> Self {
        Self(header)
    }

    fn required(&self, name: &'static str) -> Result<&'a str, EnvelopeError> {
        (self.0)(name).ok_or(EnvelopeError { name, problem: "missing" })
    }

    /// The event's type name (`ce-type`), if it has one.
    pub fn event_type(&self) -> Option<&'a str> {
        (self.0)(headers::TYPE)
    }

    /// The account it belongs to (`ce-subject`).
    pub fn account_id(&self) -> Result<&'a str, EnvelopeError> {
        self.required(headers::SUBJECT)
    }

    /// The account's version after the event: a positive integer.
    pub fn version(&self) -> Result<u64, EnvelopeError> {
        let version = self.required(headers::AGGREGATE_VERSION)?;
        version
            .parse::<u64>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or(EnvelopeError { name: headers::AGGREGATE_VERSION, problem: "not a positive integer" })
    }

    /// The account's balance after the event; `None` for events written
    /// before the header existed.
    pub fn balance(&self) -> Option<Result<i64, EnvelopeError>> {
        let balance = (self.0)(headers::ACCOUNT_BALANCE)?;
        Some(balance.parse().map_err(|_| EnvelopeError { name: headers::ACCOUNT_BALANCE, problem: "not an integer" }))
    }

    /// When the event was produced (`ce-time`), µs since the epoch.
    pub fn occurred_at_us(&self) -> Result<i64, EnvelopeError> {
        let time = self.required(headers::TIME)?;
        let malformed = EnvelopeError { name: headers::TIME, problem: "not an RFC 3339 time in range" };
        let time = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
            .map_err(|_| malformed.clone())?;
        i64::try_from(time.unix_timestamp_nanos() / 1_000).map_err(|_| malformed)
    }

    /// The idempotency key of the command that produced it, if any.
    pub fn command_id(&self) -> Option<&'a str> {
        (self.0)(headers::COMMAND_ID)
    }

    /// The PRODUCER span's `traceparent`, if well-formed, re-written from
    /// the parsed context (nothing else from the header is kept).
    pub fn traceparent(&self) -> Option<String> {
        (self.0)(headers::TRACEPARENT)
            .and_then(crate::propagation::from_traceparent)
            .and_then(|span| crate::propagation::to_traceparent(&span))
    }
}

/// Header names of an event message. The envelope follows the CloudEvents
/// NATS protocol binding in binary mode: `ce-*` attributes as headers, the
/// protobuf event as the payload.
pub mod headers {
    /// CloudEvents spec version; always [`SPEC_VERSION`].
    pub const SPEC_VERSION_HEADER: &str = "ce-specversion";
    /// The CloudEvents version this envelope follows.
    pub const SPEC_VERSION: &str = "1.0";
    /// Unique id of the event (a UUID).
    pub const ID: &str = "ce-id";
    /// Who produced the event (the producing service's name).
    pub const SOURCE: &str = "ce-source";
    /// The event's type: the protobuf message's full name.
    pub const TYPE: &str = "ce-type";
    /// When the event was produced, RFC 3339 in UTC.
    pub const TIME: &str = "ce-time";
    /// The account the event belongs to.
    pub const SUBJECT: &str = "ce-subject";
    /// The account's version after this event, in decimal.
    pub const AGGREGATE_VERSION: &str = "ce-aggregateversion";
    /// The account's balance after this event, in decimal minor units: a
    /// snapshot of the fold, so that the write side loads an account by
    /// reading its last event only (docs/adr/0001). Events written before
    /// it existed lack it; their accounts are loaded by replay.
    pub const ACCOUNT_BALANCE: &str = "ce-accountbalance";
    /// The idempotency key of the command that produced the event, if any.
    pub const COMMAND_ID: &str = "ce-commandid";
    /// The W3C trace context of the PRODUCER span that appended the event
    /// (`shared::propagation::inject_into_nats`): the projection links to
    /// it, and history rows keep it as the command's trace.
    pub const TRACEPARENT: &str = "traceparent";
    /// Media type of the payload; always [`CONTENT_TYPE_PROTOBUF`].
    pub const CONTENT_TYPE: &str = "content-type";
    /// The payload's media type.
    pub const CONTENT_TYPE_PROTOBUF: &str = "application/protobuf";
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
    }

    #[test]
    fn what_the_envelope_writes_is_what_it_reads_back() {
        let envelope = Envelope {
            event_id: "e-1",
            source: "write-service",
            event_type: "bank.v1.FundsDeposited",
            time: "2026-11-25T10:00:00.5Z",
            account_id: "acc-1",
            version: 2,
            balance: 30,
            command_id: Some("cmd-1"),
        };
        let written = envelope.headers();
        let read = StoredEnvelope::of(&written);
        assert_eq!(read.event_type(), Some("bank.v1.FundsDeposited"));
        assert_eq!((read.account_id(), read.version(), read.balance()), (Ok("acc-1"), Ok(2), Some(Ok(30))));
        assert_eq!(read.occurred_at_us(), Ok(1_795_600_800_500_000));
        assert_eq!((read.command_id(), read.traceparent()), (Some("cmd-1"), None));
    }

    #[test]
    fn a_malformed_header_is_named() {
        let headers = |pairs: &'static [(&'static str, &'static str)]| {
            StoredEnvelope::new(move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
        };
        assert_eq!(headers(&[]).version().unwrap_err().problem, "missing");
        assert_eq!(headers(&[("ce-aggregateversion", "0")]).version().unwrap_err().name, "ce-aggregateversion");
        assert_eq!(headers(&[("ce-time", "yesterday")]).occurred_at_us().unwrap_err().name, "ce-time");
        assert!(headers(&[("ce-accountbalance", "x")]).balance().is_some_and(|b| b.is_err()));
        assert_eq!(headers(&[]).balance(), None);
        assert_eq!(headers(&[("traceparent", "00-3-32-01")]).traceparent(), None);
    }

    #[test]
    fn a_comma_separated_nats_url_is_one_server_each() {
        let cli = Cli::parse_from(["test", "--nats-url", "nats://a:4222, nats://b:4222,,tls://c:4222"]);
        assert_eq!(cli.nats.servers(), ["nats://a:4222", "nats://b:4222", "tls://c:4222"]);
    }
}
