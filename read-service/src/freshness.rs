//! How far the read model is: one watcher per process polls the
//! projections' checkpoints and wakes the queries waiting for a position
//! (read-your-writes). Polling is shared — every 2 ms while anyone waits,
//! every 100 ms otherwise — so a waiting query costs no database work.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use read_model::{Progress, Projection, ReadStore};
use tokio::sync::{Notify, watch};

const BUSY_POLL: Duration = Duration::from_millis(2);
const IDLE_POLL: Duration = Duration::from_millis(100);

/// The read model's progress, shared by all queries.
#[derive(Clone)]
pub struct Freshness {
    progress: watch::Receiver<Progress>,
    waiters: Arc<AtomicUsize>,
    wake: Arc<Notify>,
}

/// The read model did not reach the position in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    pub projection: Projection,
    pub reached: u64,
    pub wanted: u64,
    pub waited: Duration,
}

impl Freshness {
    /// Starts the watcher over `store`; it stops when every `Freshness`
    /// clone is dropped.
    pub fn watch(store: ReadStore) -> Self {
        let (sender, progress) = watch::channel(Progress::default());
        let waiters = Arc::new(AtomicUsize::new(0));
        let wake = Arc::new(Notify::new());
        let freshness = Self { progress, waiters: Arc::clone(&waiters), wake: Arc::clone(&wake) };
        tokio::spawn(async move {
            loop {
                match store.progress().await {
                    Ok(progress) => {
                        sender.send_if_modified(|current| {
                            let changed = *current != progress;
                            *current = progress;
                            changed
                        });
                    }
                    Err(error) => tracing::debug!(%error, "cannot read the checkpoints"),
                }
                if sender.is_closed() {
                    return;
                }
                if waiters.load(Ordering::Acquire) > 0 {
                    tokio::time::sleep(BUSY_POLL).await;
                } else {
                    let _ = tokio::time::timeout(IDLE_POLL, wake.notified()).await;
                }
            }
        });
        freshness
    }

    /// The position `projection` has applied for `account` (its partition),
    /// or for every account when `None`, as last read: the rows read after
    /// this call include at least that much of the log.
    pub fn applied(&self, projection: Projection, account: Option<&str>) -> u64 {
        applied(&self.progress.borrow(), projection, account)
    }

    /// Waits until `projection` has applied `position` for `account` (its
    /// partition), or for every account when `None` (every partition), for
    /// at most `limit`. Returns how long it waited.
    pub async fn wait_for(
        &self,
        projection: Projection,
        account: Option<&str>,
        position: u64,
        limit: Duration,
    ) -> Result<Duration, Behind> {
        let started = Instant::now();
        let applied = |progress: &Progress| applied(progress, projection, account);
        if applied(&self.progress.borrow()) >= position {
            return Ok(Duration::ZERO);
        }
        let _waiting = Waiting::new(&self.waiters);
        self.wake.notify_one();
        let mut progress = self.progress.clone();
        match tokio::time::timeout(limit, progress.wait_for(|progress| applied(progress) >= position)).await {
            Ok(Ok(_)) => Ok(started.elapsed()),
            _ => Err(Behind {
                projection,
                reached: applied(&self.progress.borrow()),
                wanted: position,
                waited: started.elapsed(),
            }),
        }
    }
}

fn applied(progress: &Progress, projection: Projection, account: Option<&str>) -> u64 {
    match account {
        Some(account) => progress.of_account(projection, account),
        None => progress.of_all(projection),
    }
}

/// Counts a waiter for as long as it lives (also when its query is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::AcqRel);
        Self(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
