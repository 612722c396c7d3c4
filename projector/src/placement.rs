//! Which partitions of the accounts this process projects
//! (docs/scaling.md).
//!
//! - **SQLite**: one partition, projected by this process alone (one local
//!   file, one writer); no leases.
//! - **PostgreSQL**: every process of a deployment (`PROJECTOR_CONSUMER`)
//!   joins the partition leases and, once per [`ROUND`], takes or gives up
//!   partitions until it holds its fair share, ⌈partitions ÷ processes⌉. A
//!   new process gets work within a few rounds; a dead one's partitions are
//!   taken over in the first round after PostgreSQL drops its connection.
//!   Two processes and one partition: a hot standby.

use std::{collections::BTreeMap, future::Future, pin::pin, sync::Arc, time::Duration};

use async_nats::jetstream;
use futures::FutureExt;
use read_model::{Backend, PartitionLeases, ReadStore, StoreError};
use tokio::task::JoinHandle;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    app::{Partitions, Projector, consumer_name, set_health},
    config::Config,
    error::ProjectorError,
};

/// How often a process checks its leases and rebalances.
const ROUND: Duration = Duration::from_secs(1);

/// Projects this process's partitions until `shutdown` completes.
pub async fn project(
    store: ReadStore,
    stream: jetstream::stream::Stream,
    config: &Config,
    health: HealthReporter,
    shutdown: impl Future<Output = ()> + Clone + Send + 'static,
) -> Result<(), ProjectorError> {
    let count = config.partitions.get();
    if store.backend() == Backend::Sqlite && count > 1 {
        return Err(StoreError::NeedsPostgres("PROJECTOR_PARTITIONS above 1").into());
    }
    lay_out(&store, count).await?;
    if store.backend() == Backend::Sqlite {
        let projector =
            Projector::new(store, stream, config.event_log.clone(), config.consumer.clone(), Partitions::all(1));
        return Arc::new(projector).run(config, health, shutdown).await;
    }
    let mut placement = Placement {
        projectors: (0..count)
            .map(|k| {
                let consumer = consumer_name(&config.consumer, k, count);
                let projector = Projector::new(
                    store.clone(),
                    stream.clone(),
                    config.event_log.clone(),
                    consumer,
                    Partitions::one(k, count),
                );
                projector.telemetry().set_active(false);
                Arc::new(projector)
            })
            .collect(),
        held: BTreeMap::new(),
        // Processes start looking at different partitions.
        first: std::process::id() % count,
    };
    let mut leases: Option<PartitionLeases> = None;
    let mut round = tokio::time::interval(ROUND);
    let mut stopped = pin!(shutdown.clone().fuse());
    loop {
        tokio::select! {
            () = &mut stopped => break,
            _ = round.tick() => {}
        }
        placement.reap(leases.as_mut()).await;
        if leases.is_none() {
            match store.join_leases(&config.consumer).await {
                Ok(joined) => leases = Some(joined),
                Err(error) => {
                    tracing::warn!(%error, "cannot join the partition leases");
                    set_health(&health, ServingStatus::NotServing).await;
                    continue;
                }
            }
        }
        let Some(joined) = leases.as_mut() else { continue };
        match placement.rebalance(joined, config, &health, &shutdown).await {
            // Serving also with no partition: then it is a standby.
            Ok(()) if placement.held.is_empty() => set_health(&health, ServingStatus::Serving).await,
            Ok(()) => {}
            Err(error) => {
                // The locks may be gone with the connection: another process
                // may be taking the partitions over. Stop, then join again.
                tracing::warn!(%error, "lost the partition leases; stopping every partition");
                placement.stop_all();
                leases = None;
                set_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
    // Each partition finishes the batch in hand.
    for (_, running) in std::mem::take(&mut placement.held) {
        let _ = running.await;
    }
    Ok(())
}

/// Lays a fresh read model out in `count` partitions; refuses a read model
/// projected in another count (changing it is a rebuild).
async fn lay_out(store: &ReadStore, count: u32) -> Result<(), ProjectorError> {
    let progress = store.progress().await?;
    if progress.partitions() == count {
        Ok(())
    } else if progress.is_empty() {
        Ok(store.repartition(count).await?)
    } else {
        Err(StoreError::Partitions { found: progress.partitions(), wanted: count }.into())
    }
}

/// The partitions this process holds, and a projector for each partition.
struct Placement {
    projectors: Vec<Arc<Projector>>,
    held: BTreeMap<u32, JoinHandle<Result<(), ProjectorError>>>,
    first: u32,
}

impl Placement {
    /// Takes free partitions up to the fair share, or gives one up above it
    /// (one a round: the others keep their caches and consumers).
    async fn rebalance(
        &mut self,
        leases: &mut PartitionLeases,
        config: &Config,
        health: &HealthReporter,
        shutdown: &(impl Future<Output = ()> + Clone + Send + 'static),
    ) -> Result<(), StoreError> {
        let count = self.projectors.len() as u32;
        let share = count.div_ceil(leases.members().await?) as usize;
        if self.held.len() > share {
            if let Some(partition) = self.held.keys().next_back().copied() {
                self.stop(partition);
                leases.release(partition).await?;
                tracing::info!(partition, share, "gave a partition up to a new process");
            }
            return Ok(());
        }
        for partition in (0..count).map(|i| (self.first + i) % count) {
            if self.held.len() >= share {
                break;
            }
            if self.held.contains_key(&partition) || !leases.try_acquire(partition).await? {
                continue;
            }
            tracing::info!(partition, partitions = count, "projecting a partition");
            let projector = Arc::clone(&self.projectors[partition as usize]);
            projector.telemetry().set_active(true);
            let (config, health, shutdown) = (config.clone(), health.clone(), shutdown.clone());
            self.held.insert(partition, tokio::spawn(async move { projector.run(&config, health, shutdown).await }));
        }
        Ok(())
    }

    /// Gives back the partitions whose projector ended on its own (an
    /// error it cannot retry), for this or another process to take again.
    async fn reap(&mut self, mut leases: Option<&mut PartitionLeases>) {
        let ended: Vec<u32> = self.held.iter().filter(|(_, task)| task.is_finished()).map(|(p, _)| *p).collect();
        for partition in ended {
            if let Some(Ok(Err(error))) = self.held.remove(&partition).and_then(FutureExt::now_or_never) {
                tracing::error!(partition, %error, "a partition's projector stopped");
            }
            self.projectors[partition as usize].telemetry().set_active(false);
            if let Some(leases) = leases.as_deref_mut() {
                let _ = leases.release(partition).await;
            }
        }
    }

    /// Stops projecting `partition` now. Safe at any point: a batch in
    /// flight rolls back, and what was not acked is delivered again.
    fn stop(&mut self, partition: u32) {
        if let Some(task) = self.held.remove(&partition) {
            task.abort();
        }
        self.projectors[partition as usize].telemetry().set_active(false);
    }

    fn stop_all(&mut self) {
        let held: Vec<u32> = self.held.keys().copied().collect();
        for partition in held {
            self.stop(partition);
        }
    }
}
