//! Where the projector reads the log from, and in what batches: the
//! durable consumer positioned at the read store's checkpoint (after
//! checking the read model is a projection of this log), and "what has
//! arrived" cut into batches without waiting.

use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, ReplayPolicy, pull};
use futures::{Stream, StreamExt};
use read_model::{Checkpoints, StoreError, partition_of};

use super::Projector;
use crate::{config::Config, domain::EventRecord, error::ProjectorError};

/// What has arrived, in batches: waits for one message, then takes
/// whatever else is already there, up to `max` — small batches when idle
/// (low lag), large under a backlog. An error is yielded in its place,
/// after the messages that came before it, never dropped.
pub(crate) fn arrived<T, E>(
    messages: impl Stream<Item = Result<T, E>>,
    max: usize,
) -> impl Stream<Item = Result<Vec<T>, E>> {
    messages.ready_chunks(max.max(1)).flat_map(|chunk| futures::stream::iter(runs(chunk)))
}

/// A chunk of results as runs of messages, with each error in its place.
fn runs<T, E>(chunk: Vec<Result<T, E>>) -> Vec<Result<Vec<T>, E>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for item in chunk {
        match item {
            Ok(message) => run.push(message),
            Err(error) => {
                if !run.is_empty() {
                    runs.push(Ok(std::mem::take(&mut run)));
                }
                runs.push(Err(error));
            }
        }
    }
    if !run.is_empty() {
        runs.push(Ok(run));
    }
    runs
}

impl Projector {
    /// Whether the read model is a projection of this log. After a restore
    /// from a backup older than the read model the log can end before the
    /// read model's checkpoint, or, once written to again, hold other events
    /// at positions the read model has applied, which the projector would
    /// skip. The event at the history checkpoint `applied` (the lowest of
    /// this process's partitions) must be the one its row came from: same
    /// account, version, position and time. Not compared: an event set
    /// aside as a dead letter, and one of a partition this process does not
    /// own (its projector may not have applied it yet).
    async fn check_same_log(&self, applied: u64) -> Result<(), ProjectorError> {
        if applied == 0 {
            return Ok(());
        }
        let differs = |why: String| Err(ProjectorError::NotThisLog { applied, why });
        let last = self
            .stream
            .get_info()
            .await
            .map_err(ProjectorError::event_log("read the stream's state"))?
            .state
            .last_sequence;
        if last < applied {
            return differs(format!("the log ends at position {last}"));
        }
        if self.store.is_dead_letter(applied).await? {
            return Ok(());
        }
        let message = self
            .stream
            .direct_get(applied)
            .await
            .map_err(ProjectorError::event_log("read the event at the checkpoint"))?;
        let header = |name: &str| message.headers.get(name).map(|value| value.as_str());
        let read = EventRecord::read(applied, &message.subject, &self.names.subject_prefix, header, &message.payload);
        // Not an event the projector can read: nothing to compare.
        let Ok(event) = read else { return Ok(()) };
        if !self.partitions.owned.contains(&partition_of(&event.account_id, self.partitions.count)) {
            return Ok(());
        }
        let row = self.store.history(&event.account_id, event.version - 1, 1).await?.into_iter().next();
        match row {
            Some(row)
                if row.version == event.version
                    && row.position == applied
                    && row.occurred_at_us == event.occurred_at_us =>
            {
                Ok(())
            }
            _ => differs(format!(
                "the log's event there ({} version {}) is not the one the read model applied",
                event.account_id, event.version
            )),
        }
    }

    /// Recreates the durable consumer at the lowest checkpoint + 1 and
    /// opens its message stream.
    pub(super) async fn position_consumer(&self, config: &Config) -> Result<pull::Stream, ProjectorError> {
        let progress = self.store.progress().await?;
        if progress.partitions() != self.partitions.count {
            return Err(StoreError::Partitions { found: progress.partitions(), wanted: self.partitions.count }.into());
        }
        let checkpoints = Checkpoints::lowest(
            self.partitions.owned.iter().map(|p| progress.partition(*p)).collect::<Vec<_>>().iter(),
        );
        self.telemetry.set_checkpoints(checkpoints);
        self.check_same_log(checkpoints.account_history).await?;
        let start = checkpoints.min() + 1;
        // A durable consumer cannot change its start; recreate it. Nothing
        // is lost: whatever it had delivered but not acked is above the
        // checkpoint and is delivered again.
        let _ = self.stream.delete_consumer(&self.consumer).await;
        let batch = config.batch_size.get();
        let consumer = self
            .stream
            .create_consumer(pull::Config {
                durable_name: Some(self.consumer.clone()),
                description: Some("bank projector: account_summary, account_history".into()),
                filter_subject: self.names.all_accounts_subject(),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
                // Applied in order and acked after the commit: acking the
                // batch's last event acks the rest (one ack per batch, not
                // per event; a partition's consumer sees every event).
                ack_policy: AckPolicy::All,
                ack_wait: config.ack_wait,
                // Never give up on an event: poison is handled here, with a
                // dead letter, not by JetStream silently dropping it.
                max_deliver: -1,
                max_ack_pending: i64::try_from(batch * 2).unwrap_or(i64::MAX),
                replay_policy: ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(ProjectorError::event_log("create the durable consumer"))?;
        tracing::info!(start, consumer = %self.consumer, "consuming the event log");
        consumer
            .stream()
            .max_messages_per_batch(batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(ProjectorError::event_log("consume the log"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_splits_a_chunk_and_keeps_its_place() {
        let chunk: Vec<Result<u32, &str>> = vec![Ok(1), Ok(2), Err("e1"), Err("e2"), Ok(3)];
        assert_eq!(runs(chunk), vec![Ok(vec![1, 2]), Err("e1"), Err("e2"), Ok(vec![3])]);
        assert_eq!(runs::<u32, &str>(vec![]), vec![]);
    }

    #[tokio::test]
    async fn what_has_arrived_comes_in_batches_of_at_most_max() {
        let ready = futures::stream::iter((1..=5).map(Ok::<u32, &str>));
        let batches: Vec<_> = arrived(ready, 2).collect().await;
        assert_eq!(batches, vec![Ok(vec![1, 2]), Ok(vec![3, 4]), Ok(vec![5])]);
        let with_error = futures::stream::iter(vec![Ok(1), Err("lost?"), Ok(2)]);
        let batches: Vec<_> = arrived(with_error, 10).collect().await;
        assert_eq!(batches, vec![Ok(vec![1]), Err("lost?"), Ok(vec![2])]);
    }
}
