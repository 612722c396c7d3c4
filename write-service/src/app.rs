//! Command handling: load the account (cache or log), decide, append, and
//! remember the outcome. The one place where the write side's consistency
//! rules live:
//!
//! - a command is decided against state that includes every event up to the
//!   position it appends after (optimistic concurrency: a stale decision is
//!   refused by JetStream and decided again on fresh state);
//! - a command is never *refused* on cached state: the cache may trail other
//!   replicas, so a refusal is confirmed against the log first;
//! - a retry with the same `command_id` returns the original reply: from
//!   the reply cache if this replica remembers it; otherwise an
//!   accepted one by JetStream's deduplication of its `Nats-Msg-Id`; a
//!   refused one (e.g. OpenAccount again) from the account's recent
//!   commands, read from the log before the refusal is returned.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
};

use lru::LruCache;

use crate::{
    domain::{AccountId, Command, CommandId},
    error::CommandError,
    event_log::{Appended, EventLog, EventLogError, LoadedAccount, ReadFrom, RecordedCommand},
};

/// How often a command is decided again after losing a race on its account
/// before the client is told to retry (ABORTED). Each attempt is one read
/// of the account from the stream leader and one append. Ten, not five:
/// two replicas at ~1,600 deposits/s on one account exhausted five now and
/// then (`two_replicas_on_one_hot_account_at_a_moderate_rate_abort_nothing`).
const MAX_ATTEMPTS: usize = 10;

/// An accepted command's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The account's version after the command.
    pub version: u64,
    /// The event's position in the log.
    pub position: u64,
    /// The type of the event this call appended; `None` when the command
    /// was a retry whose event was already in the log.
    pub produced: Option<&'static str>,
    /// How many times this call decided the command against the account's
    /// state: 1 with no concurrent writer, more after lost races (at most
    /// `MAX_ATTEMPTS`); 0 for a reply replayed from memory or the log.
    pub attempts: u32,
}

/// The write side's accounts: the event log plus two bounded caches, so
/// memory does not grow with the number of accounts ever seen.
///
/// Each cached account is a slot with its own async lock: commands on one
/// account are decided one at a time in this replica (they would only
/// conflict in the log otherwise), while other accounts proceed in
/// parallel. Replicas still race each other; the log's optimistic
/// concurrency settles that.
pub struct Accounts {
    log: OnceLock<EventLog>,
    slots: Mutex<LruCache<AccountId, Slot>>,
    replies: Mutex<LruCache<String, Accepted>>,
}

/// An account's cached state; `None` until loaded, or after an outcome
/// that makes the cached state untrustworthy.
type Slot = Arc<tokio::sync::Mutex<Option<LoadedAccount>>>;

impl Accounts {
    /// Accounts whose state cache holds `states` accounts and whose reply
    /// cache holds `replies` recent command outcomes.
    pub fn new(states: NonZeroUsize, replies: NonZeroUsize) -> Self {
        Self {
            log: OnceLock::new(),
            slots: Mutex::new(LruCache::new(states)),
            replies: Mutex::new(LruCache::new(replies)),
        }
    }

    /// Makes the event log available; commands fail with UNAVAILABLE until then.
    pub fn attach(&self, log: EventLog) {
        if self.log.set(log).is_err() {
            tracing::warn!("the event log was attached twice; keeping the first");
        }
    }

    /// The event log, once attached.
    pub fn log(&self) -> Option<&EventLog> {
        self.log.get()
    }

    /// Executes `command` on account `id`.
    pub async fn execute(
        &self,
        id: &AccountId,
        command: &Command,
        command_id: Option<&CommandId>,
    ) -> Result<Accepted, CommandError> {
        let log = self.log.get().ok_or(CommandError::Unavailable(EventLogError::NotReady))?;
        let reply_key = command_id.map(|command_id| reply_key(id, command_id.as_str()));
        if let Some(accepted) = self.replay(reply_key.as_deref()) {
            return Ok(accepted);
        }
        let slot = self.slot(id);
        let mut cached = slot.lock().await;
        // Taken out of the slot: every path that returns early leaves the
        // slot empty (reload next time) unless it puts a trusted state back.
        let (mut loaded, mut fresh) = match cached.take() {
            Some(loaded) => (loaded, false),
            None => (self.load(log, id, ReadFrom::AnyReplica).await?, true),
        };

        for attempt in 1..=MAX_ATTEMPTS as u32 {
            if fresh && let Some(accepted) = self.replay(reply_key.as_deref()) {
                *cached = Some(loaded);
                return Ok(accepted);
            }
            let event = match loaded.account.decide(command) {
                Ok(event) => event,
                Err(_) if !fresh => {
                    (loaded, fresh) = (self.load(log, id, ReadFrom::Leader).await?, true);
                    continue;
                }
                // A refusal may be a retry of a command that was accepted
                // earlier: its reply is in the account's recent commands.
                // A snapshot load read only the last one, so read them all
                // (costly, but only refusals with a command_id pay it, once
                // per account) and decide again.
                Err(_) if reply_key.is_some() && !loaded.history_read => {
                    (loaded, fresh) = (self.load_history(log, id).await?, true);
                    continue;
                }
                Err(reason) => {
                    *cached = Some(loaded);
                    return Err(CommandError::Rejected { account_id: id.clone(), reason });
                }
            };
            let mut after = loaded.account.clone();
            after.apply(&event);
            match log.append(id, loaded.position, &after, &event, command_id).await {
                Ok(Appended::New { position }) => {
                    let version = after.version;
                    loaded.account = after;
                    loaded.position = position;
                    *cached = Some(loaded);
                    let accepted = Accepted { version, position, produced: Some(event.type_name()), attempts: attempt };
                    if let Some(key) = reply_key {
                        lock(&self.replies).put(key, Accepted { produced: None, attempts: 0, ..accepted });
                    }
                    return Ok(accepted);
                }
                // Our state did not include that event: leave the slot
                // empty so the next command reloads.
                Ok(Appended::Duplicate { position, version }) => {
                    return Ok(Accepted { version, position, produced: None, attempts: attempt });
                }
                Err(EventLogError::Conflict) => (loaded, fresh) = (self.load(log, id, ReadFrom::Leader).await?, true),
                // The append may or may not have happened: the slot stays
                // empty, the next command reloads.
                Err(error) => return Err(CommandError::from_log(id, error)),
            }
        }
        Err(CommandError::Contention { account_id: id.clone(), attempts: MAX_ATTEMPTS })
    }

    fn replay(&self, reply_key: Option<&str>) -> Option<Accepted> {
        reply_key.and_then(|key| lock(&self.replies).get(key).copied())
    }

    fn slot(&self, id: &AccountId) -> Slot {
        let mut slots = lock(&self.slots);
        Arc::clone(slots.get_or_insert(id.clone(), Slot::default))
    }

    /// Account `id`'s state from the log; caches the outcomes of the
    /// commands the load came across.
    async fn load(&self, log: &EventLog, id: &AccountId, from: ReadFrom) -> Result<LoadedAccount, CommandError> {
        let loaded = log.load(id, from).await;
        self.remember(id, loaded)
    }

    /// Like [`Self::load`], replaying the account's history so that all of
    /// its recent commands are remembered.
    async fn load_history(&self, log: &EventLog, id: &AccountId) -> Result<LoadedAccount, CommandError> {
        let loaded = log.load_history(id).await;
        self.remember(id, loaded)
    }

    fn remember(
        &self,
        id: &AccountId,
        loaded: Result<(LoadedAccount, Vec<RecordedCommand>), EventLogError>,
    ) -> Result<LoadedAccount, CommandError> {
        let (loaded, commands) = loaded.map_err(|error| CommandError::from_log(id, error))?;
        let mut replies = lock(&self.replies);
        for command in commands {
            let accepted =
                Accepted { version: command.version, position: command.position, produced: None, attempts: 0 };
            replies.put(reply_key(id, &command.command_id), accepted);
        }
        Ok(loaded)
    }
}

fn reply_key(id: &AccountId, command_id: &str) -> String {
    format!("{id}:{command_id}")
}

/// The caches are consistent after every statement, so a panic elsewhere
/// while one was locked leaves nothing half-done: ignore the poison.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
