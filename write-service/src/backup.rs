//! Backups of the event log: `write-service backup` and `write-service
//! restore`. A backup is a JetStream snapshot of the stream — every message
//! with its sequence number (the event's `position`), timestamp and
//! headers, the stream's configuration, and its durable consumers with
//! their acknowledgement floors — taken by the server itself through its
//! snapshot API (`$JS.API.STREAM.SNAPSHOT`, what `nats stream backup`
//! uses), so the log does not need to stop. A restore recreates the stream
//! from one (`$JS.API.STREAM.RESTORE`) with the same positions, so the
//! read model's checkpoints and the clients' `min_position`s stay valid.
//!
//! On disk a backup is a directory `<stream>-<UTC time>` holding
//! `backup.json` (the stream's configuration and state as the server
//! reported them) and `stream.snapshot` (the server's archive, opaque
//! here). It is written under a temporary name and renamed when complete,
//! so a directory with the final name is always a whole backup.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

/// The server sends the snapshot in chunks of this size, and a restore
/// sends them back in the same.
const CHUNK_BYTES: usize = 128 * 1024;

/// How long to wait for the next chunk of a snapshot, or for the server to
/// take one of a restore, before giving up.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the server may take to rebuild the stream once it has every
/// chunk of a restore (it checks and indexes every message).
const FINISH_TIMEOUT: Duration = Duration::from_secs(600);

const META_FILE: &str = "backup.json";
const DATA_FILE: &str = "stream.snapshot";

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A request to NATS failed (no answer, no responders, connection lost).
    #[error("{what}: {source}")]
    Request { what: String, source: async_nats::RequestError },
    /// A subscription or publish to NATS failed.
    #[error("{what}: {source}")]
    Nats { what: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// JetStream answered with an error.
    #[error("{what}: JetStream refused: {description}")]
    Refused { what: String, description: String },
    /// The snapshot stopped arriving, or a chunk of a restore was not taken.
    #[error("{what}: no answer within {timeout:?}")]
    Stalled { what: String, timeout: Duration },
    /// A file of the backup cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The backup directory is not one this command wrote.
    #[error("{} is not a backup of the event log: {reason}", path.display())]
    NotABackup { path: PathBuf, reason: String },
    /// The stream to restore exists: a restore never overwrites events.
    #[error(
        "the stream {stream} exists (its last position is {last_position}); a restore never overwrites a log. \
         Stop the write-service, back the stream up if it may still matter, delete it, then restore"
    )]
    StreamExists { stream: String, last_position: u64 },
}

/// What a finished backup or restore holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The backup's directory.
    pub dir: PathBuf,
    /// Events in the stream.
    pub events: u64,
    /// Position of its first and last event (0 when empty).
    pub first_position: u64,
    pub last_position: u64,
}

impl std::fmt::Display for BackupSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} events, positions {}..={}",
            self.dir.display(),
            self.events,
            self.first_position,
            self.last_position
        )
    }
}

/// Snapshots `stream` into a new directory under `into`, then deletes all
/// but the newest `keep` backups of that stream there.
pub async fn backup(client: &Client, stream: &str, into: &Path, keep: usize) -> Result<BackupSummary, BackupError> {
    let name = format!("{stream}-{}", utc_stamp());
    let partial = into.join(format!(".{name}.partial"));
    let dir = into.join(&name);
    std::fs::create_dir_all(into).map_err(|source| io(into, source))?;
    // Not create_dir_all: a second backup in the same second fails here
    // instead of writing into the first one's files.
    std::fs::create_dir(&partial).map_err(|source| io(&partial, source))?;
    let result = snapshot_into(client, stream, &partial).await.and_then(|state| {
        std::fs::rename(&partial, &dir).map(|()| summarise(&dir, &state)).map_err(|source| io(&dir, source))
    });
    if result.is_err() {
        // Best effort: a failed backup leaves nothing that looks like one.
        let _ = std::fs::remove_dir_all(&partial);
    }
    let summary = result?;
    prune(into, stream, keep, &partial)?;
    Ok(summary)
}

/// Writes the snapshot of `stream` into `dir`; returns the stream's state
/// at the snapshot.
async fn snapshot_into(client: &Client, stream: &str, dir: &Path) -> Result<Value, BackupError> {
    let what = format!("backing up stream {stream}");

    let inbox = client.new_inbox();
    let mut chunks = client
        .subscribe(inbox.clone())
        .await
        .map_err(|error| BackupError::Nats { what: what.clone(), source: error.into() })?;
    // `jsck`: the server checks every message's checksum before it answers,
    // which takes a while on a large stream.
    let request = json!({ "deliver_subject": inbox, "chunk_size": CHUNK_BYTES, "jsck": true });
    let subject = format!("$JS.API.STREAM.SNAPSHOT.{stream}").into();
    let answer = timed_request(client, subject, request.to_string().into(), FINISH_TIMEOUT, &what).await?;
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
    refused(&answer, &what)?;
    let meta = json!({ "config": answer["config"], "state": answer["state"] });
    write_file(&dir.join(META_FILE), &serde_json::to_vec_pretty(&meta).unwrap_or_default())?;

    let data_path = dir.join(DATA_FILE);
    let mut data = std::fs::File::create(&data_path).map_err(|source| io(&data_path, source))?;
    loop {
        let chunk = tokio::time::timeout(CHUNK_TIMEOUT, chunks.next())
            .await
            .map_err(|_| BackupError::Stalled { what: what.clone(), timeout: CHUNK_TIMEOUT })?
            .ok_or_else(|| BackupError::Nats { what: what.clone(), source: "the subscription ended".into() })?;
        // A chunk carries a reply subject, the acknowledgement that lets the
        // server send more, except the last one; the end is an empty
        // message whose status says whether the snapshot completed (204,
        // or none before 2.11).
        if chunk.payload.is_empty() && chunk.reply.is_none() {
            match chunk.status.map(|status| status.as_u16()) {
                None | Some(204) => break,
                Some(code) => {
                    let description = chunk.description.unwrap_or_default();
                    return Err(BackupError::Refused { what, description: format!("{code} {description}") });
                }
            }
        }
        data.write_all(&chunk.payload).map_err(|source| io(&data_path, source))?;
        if let Some(ack) = chunk.reply {
            client
                .publish(ack, Bytes::new())
                .await
                .map_err(|error| BackupError::Nats { what: what.clone(), source: error.into() })?;
        }
    }
    data.sync_all().map_err(|source| io(&data_path, source))?;
    Ok(meta["state"].clone())
}

/// Recreates `stream` from the backup in `from`, with the same positions,
/// configuration and consumers. Refuses if the stream exists.
pub async fn restore(client: &Client, stream: &str, from: &Path) -> Result<BackupSummary, BackupError> {
    let what = format!("restoring stream {stream}");
    let meta_path = from.join(META_FILE);
    let meta: Value = serde_json::from_slice(&read_file(&meta_path)?)
        .map_err(|error| BackupError::NotABackup { path: from.to_owned(), reason: error.to_string() })?;
    let backed_up = meta["config"]["name"].as_str().unwrap_or_default();
    if backed_up != stream {
        return Err(BackupError::NotABackup {
            path: from.to_owned(),
            reason: format!("it holds stream {backed_up:?}, EVENT_STREAM is {stream:?}"),
        });
    }
    let data_path = from.join(DATA_FILE);
    let mut data = std::fs::File::open(&data_path).map_err(|source| io(&data_path, source))?;

    let info = client
        .request(format!("$JS.API.STREAM.INFO.{stream}"), Bytes::new())
        .await
        .map_err(|source| BackupError::Request { what: what.clone(), source })?;
    let info: Value = serde_json::from_slice(&info.payload).unwrap_or_default();
    if info["error"].is_null() {
        let last_position = info["state"]["last_seq"].as_u64().unwrap_or_default();
        return Err(BackupError::StreamExists { stream: stream.to_owned(), last_position });
    }

    let request = json!({ "config": meta["config"], "state": meta["state"] });
    let answer = api(client, format!("$JS.API.STREAM.RESTORE.{stream}"), request.to_string().into(), &what).await?;
    let deliver: Subject = answer["deliver_subject"].as_str().unwrap_or_default().into();
    // A chunk at a time: a snapshot can be far larger than memory.
    let mut chunk = vec![0; CHUNK_BYTES];
    loop {
        let read = read_chunk(&mut data, &mut chunk).map_err(|source| io(&data_path, source))?;
        if read == 0 {
            break;
        }
        let bytes = Bytes::copy_from_slice(&chunk[..read]);
        let reply = timed_request(client, deliver.clone(), bytes, CHUNK_TIMEOUT, &what).await?;
        if !reply.payload.is_empty() {
            let description = String::from_utf8_lossy(&reply.payload).into_owned();
            return Err(BackupError::Refused { what, description });
        }
    }
    // An empty chunk ends the transfer; the answer is the new stream's info.
    let done = timed_request(client, deliver, Bytes::new(), FINISH_TIMEOUT, &what).await?;
    let created: Value = serde_json::from_slice(&done.payload).unwrap_or_default();
    refused(&created, &what)?;
    Ok(summarise(from, &created["state"]))
}

/// A JetStream API request whose answer is JSON, checked for an error.
async fn api(client: &Client, subject: String, body: Bytes, what: &str) -> Result<Value, BackupError> {
    let answer =
        client.request(subject, body).await.map_err(|source| BackupError::Request { what: what.to_owned(), source })?;
    let answer: Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
    refused(&answer, what)?;
    Ok(answer)
}

fn refused(answer: &Value, what: &str) -> Result<(), BackupError> {
    if answer["error"].is_null() && answer.is_object() {
        return Ok(());
    }
    let description = answer["error"]["description"].as_str().unwrap_or("an answer that is not JetStream's");
    Err(BackupError::Refused { what: what.to_owned(), description: description.to_owned() })
}

async fn timed_request(
    client: &Client,
    subject: Subject,
    body: Bytes,
    timeout: Duration,
    what: &str,
) -> Result<async_nats::Message, BackupError> {
    let request = async_nats::Request::new().payload(body).timeout(Some(timeout));
    client.send_request(subject, request).await.map_err(|source| match source.kind() {
        async_nats::RequestErrorKind::TimedOut => BackupError::Stalled { what: what.to_owned(), timeout },
        _ => BackupError::Request { what: what.to_owned(), source },
    })
}

fn summarise(dir: &Path, state: &Value) -> BackupSummary {
    let number = |key: &str| state[key].as_u64().unwrap_or_default();
    BackupSummary {
        dir: dir.to_owned(),
        events: number("messages"),
        first_position: number("first_seq"),
        last_position: number("last_seq"),
    }
}

/// The newest backup of `stream` in `dir`.
pub fn latest(dir: &Path, stream: &str) -> Result<PathBuf, BackupError> {
    backups(dir, stream)?.pop().ok_or_else(|| BackupError::NotABackup {
        path: dir.to_owned(),
        reason: format!("it holds no backup of stream {stream}"),
    })
}

/// The complete backups of `stream` in `dir`, oldest first (their names
/// sort by time).
fn backups(dir: &Path, stream: &str) -> Result<Vec<PathBuf>, BackupError> {
    let mut backups = entries(dir, |name| is_backup_of(name, stream))?;
    backups.retain(|path| path.join(META_FILE).exists());
    Ok(backups)
}

/// `<stream>-<stamp>`, exactly: another stream's name may start with this
/// one's.
fn is_backup_of(name: &str, stream: &str) -> bool {
    name.strip_prefix(stream)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|stamp| stamp.len() == STAMP_LEN && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T')
}

/// The paths in `dir` whose names `wanted` accepts, sorted.
fn entries(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, BackupError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| io(dir, source))?
        .filter_map(Result::ok)
        .filter(|entry| wanted(&entry.file_name().to_string_lossy()))
        .map(|entry| entry.path())
        .collect();
    paths.sort();
    Ok(paths)
}

/// Keeps the newest `keep` backups of `stream` in `dir` and deletes the
/// others, and any unfinished one but `current` (a run that was killed).
fn prune(dir: &Path, stream: &str, keep: usize, current: &Path) -> Result<(), BackupError> {
    let backups = backups(dir, stream)?;
    let surplus = backups.len().saturating_sub(keep);
    let unfinished = entries(dir, |name| {
        name.strip_prefix('.')
            .and_then(|rest| rest.strip_suffix(".partial"))
            .is_some_and(|name| is_backup_of(name, stream))
    })?;
    for old in backups[..surplus].iter().chain(unfinished.iter().filter(|path| path.as_path() != current)) {
        std::fs::remove_dir_all(old).map_err(|source| io(old, source))?;
    }
    Ok(())
}

/// Fills `buffer` as far as the file allows; the bytes read (0 at the end).
fn read_chunk(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

/// The length of [`utc_stamp`]'s stamps.
const STAMP_LEN: usize = 16;

/// `20261206T071503Z`: sorts as time does, and is a valid file name.
fn utc_stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    time::format_description::parse_borrowed::<2>("[year][month][day]T[hour][minute][second]Z")
        .ok()
        .and_then(|format| now.format(&format).ok())
        .unwrap_or_else(|| now.unix_timestamp().to_string())
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), BackupError> {
    std::fs::write(path, contents).map_err(|source| io(path, source))
}

fn read_file(path: &Path) -> Result<Vec<u8>, BackupError> {
    std::fs::read(path).map_err(|source| io(path, source))
}

fn io(path: &Path, source: std::io::Error) -> BackupError {
    BackupError::Io { path: path.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_are_named_so_that_their_names_sort_by_time() {
        let stamp = utc_stamp();
        assert_eq!(stamp.len(), 16, "{stamp}");
        assert!(stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T', "{stamp}");
    }

    #[test]
    fn pruning_keeps_the_newest_backups_of_the_stream_and_nothing_else_is_touched() {
        let dir = std::env::temp_dir().join(format!("cqrs-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names = [
            "S-20260101T000000Z",
            "S-20260102T000000Z",
            "S-20260103T000000Z",
            "OTHER-20250101T000000Z",
            "S-X-20270101T000000Z",
        ];
        for name in names {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join(META_FILE), "{}").unwrap();
        }
        std::fs::create_dir_all(dir.join(".S-20260104T000000Z.partial")).unwrap();
        std::fs::create_dir_all(dir.join(".S-20260105T000000Z.partial")).unwrap();
        prune(&dir, "S", 2, &dir.join(".S-20260105T000000Z.partial")).unwrap();
        assert_eq!(latest(&dir, "S").unwrap(), dir.join("S-20260103T000000Z"));
        assert!(latest(&dir, "T").is_err());
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".S-20260105T000000Z.partial",
                "OTHER-20250101T000000Z",
                "S-20260102T000000Z",
                "S-20260103T000000Z",
                "S-X-20270101T000000Z"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
