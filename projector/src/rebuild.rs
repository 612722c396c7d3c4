//! `projector rebuild`: empties projections and replays the whole log into
//! them, with a progress bar and a final events/s figure.
//!
//! Safe while `projector run` is running: both apply through the same
//! checkpoint compare-and-set, so each event is applied once, by whichever
//! gets there first; the running projector notices the reset projection is
//! behind and repositions too.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use read_model::{Projection, StoreError};

use crate::{
    app::{Delivered, Projector, consumer::arrived},
    error::ProjectorError,
};

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    pub projections: Vec<Projection>,
    pub events: u64,
    /// Transactions it took (events per transaction = events / batches).
    pub batches: u64,
    pub elapsed: Duration,
}

impl RebuildReport {
    /// Events replayed per second.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Resets `projections` and replays the log into them up to its current end.
pub async fn rebuild(
    projector: &Projector,
    stream: &async_nats::jetstream::stream::Stream,
    filter_subject: String,
    projections: &[Projection],
    batch_size: usize,
    show_progress: bool,
) -> Result<RebuildReport, ProjectorError> {
    for projection in projections {
        projector.store().reset(*projection).await?;
    }
    let mut info_stream = stream.clone();
    let last =
        info_stream.info().await.map_err(ProjectorError::event_log("read the stream's state"))?.state.last_sequence;
    let progress = if show_progress { ProgressBar::new(last) } else { ProgressBar::hidden() };
    progress.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress.set_message(projections.iter().map(|p| p.name()).collect::<Vec<_>>().join("+"));

    let started = Instant::now();
    let mut position = 0;
    let mut batches = 0;
    if last > 0 {
        let consumer = stream
            .create_consumer(OrderedConfig { filter_subject, deliver_policy: DeliverPolicy::All, ..Default::default() })
            .await
            .map_err(ProjectorError::event_log("create the replay's consumer"))?;
        let messages = consumer.messages().await.map_err(ProjectorError::event_log("consume the log"))?;
        let mut arrivals = std::pin::pin!(arrived(messages, batch_size));
        while position < last {
            let batch = match arrivals.next().await {
                Some(Ok(batch)) => batch,
                // The ordered consumer recreates itself after the last
                // message it delivered: the replay goes on, in order.
                Some(Err(error)) => {
                    tracing::warn!(%error, "the replay's consumer failed; it resumes where it was");
                    continue;
                }
                None => break,
            };
            let delivered: Vec<Delivered> = batch.iter().map(Delivered::from_message).collect::<Result<_, _>>()?;
            batches += 1;
            let report = loop {
                match projector.apply(&delivered, projections).await {
                    Ok(report) => break report,
                    // A running projector moved the checkpoint: re-read it.
                    Err(StoreError::CheckpointMoved(_)) => continue,
                    Err(error) => return Err(error.into()),
                }
            };
            if let Some(expected) = report.gap {
                return Err(ProjectorError::ReplaySkipped { expected });
            }
            // Everything up to here is applied (by us, or by a projector
            // running alongside: then it was a duplicate for us).
            position = delivered.last().map_or(position, |d| d.position);
            progress.set_position(position.min(last));
            projector.telemetry().set_replay_progress(position.min(last), last);
        }
    }
    progress.finish();
    let report = RebuildReport { projections: projections.to_vec(), events: last, batches, elapsed: started.elapsed() };
    Ok(report)
}
