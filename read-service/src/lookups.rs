//! GetAccount's lookups, coalesced: lookups that arrive while earlier ones
//! are at the read store go to it together, as one
//! `WHERE account_id IN (…)` statement.
//!
//! Why: on SQLite every statement is a round trip to the connection's
//! worker thread, two context switches that cost more than the query (at
//! 64 in flight, 45 % of the read-service's CPU was the kernel switching
//! threads); on PostgreSQL it is a network round trip. A batch pays it
//! once. A lone lookup is not delayed: it goes out at once, and batches
//! form only while every connection is busy (docs/benchmarks.md).

use std::{collections::HashMap, sync::Arc};

use read_model::{AccountRow, ReadStore, StoreError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::QueryError;

/// The most ids in one statement.
const MAX_BATCH: usize = 256;

/// Lookups waiting for a connection before callers wait to queue more.
const QUEUE: usize = 4_096;

type Answer = Result<Option<AccountRow>, Arc<StoreError>>;

struct Lookup {
    account_id: String,
    answer: oneshot::Sender<Answer>,
}

/// A handle on the coalescing task; the task ends when the last handle is
/// dropped.
pub struct AccountLookups {
    lookups: mpsc::Sender<Lookup>,
}

impl AccountLookups {
    /// Coalesces lookups on `store`, with at most `statements` at the store
    /// at once (its connection pool's size).
    pub fn new(store: ReadStore, statements: usize) -> Self {
        let (lookups, queue) = mpsc::channel(QUEUE);
        tokio::spawn(coalesce(store, queue, Arc::new(Semaphore::new(statements.max(1)))));
        Self { lookups }
    }

    /// One account, if the read model has it.
    pub async fn account(&self, account_id: &str) -> Result<Option<AccountRow>, QueryError> {
        let (answer, answered) = oneshot::channel();
        let lookup = Lookup { account_id: account_id.to_owned(), answer };
        // Either end closes only when the service is going away.
        self.lookups.send(lookup).await.map_err(|_| QueryError::NotReady)?;
        answered.await.map_err(|_| QueryError::NotReady)?.map_err(QueryError::Store)
    }
}

/// Takes a connection slot, then everything queued meanwhile (up to
/// `MAX_BATCH`), and sends it as one statement.
async fn coalesce(store: ReadStore, mut queue: mpsc::Receiver<Lookup>, statements: Arc<Semaphore>) {
    while let Some(first) = queue.recv().await {
        let Ok(slot) = Arc::clone(&statements).acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(lookup) => batch.push(lookup),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            answer(&store, batch).await;
            drop(slot);
        });
    }
}

async fn answer(store: &ReadStore, batch: Vec<Lookup>) {
    let mut ids: Vec<String> = batch.iter().map(|lookup| lookup.account_id.clone()).collect();
    ids.sort_unstable();
    ids.dedup();
    match store.accounts_by_id(&ids).await {
        Ok(rows) => {
            let rows: HashMap<String, AccountRow> = rows.into_iter().map(|row| (row.account_id.clone(), row)).collect();
            for lookup in batch {
                let _ = lookup.answer.send(Ok(rows.get(&lookup.account_id).cloned()));
            }
        }
        Err(error) => {
            let error = Arc::new(error);
            for lookup in batch {
                let _ = lookup.answer.send(Err(Arc::clone(&error)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures::future::join_all;
    use read_model::AccountStatus;

    use super::*;

    fn row(n: usize) -> AccountRow {
        AccountRow {
            account_id: format!("acc-{n}"),
            owner: "Ada".into(),
            balance: n as i64,
            status: AccountStatus::Open,
            version: 1,
            position: n as u64 + 1,
            opened_at_us: 0,
            updated_at_us: 0,
            provenance: read_model::Provenance::default(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_each_get_their_own_account_or_none() {
        let folder = tempfile::tempdir().unwrap();
        let store = ReadStore::connect(&format!("sqlite://{}/read.db", folder.path().display()), 2).await.unwrap();
        let mut batch = store.begin(&[0], 1).await.unwrap();
        batch.upsert_accounts(&(0..50).map(row).collect::<Vec<_>>()).await.unwrap();
        batch.commit().await.unwrap();
        let lookups = AccountLookups::new(store.clone(), 2);

        // 600 at once over 100 ids (half of them absent), each id asked six
        // times: batches form, repeat ids and all.
        let asked: Vec<usize> = (0..600).map(|i| (i * 37) % 100).collect();
        let ids: Vec<String> = asked.iter().map(|n| format!("acc-{n}")).collect();
        let answers = join_all(ids.iter().map(|id| lookups.account(id))).await;
        for (n, answer) in asked.iter().zip(answers) {
            let expected = (*n < 50).then(|| row(*n));
            assert_eq!(answer.unwrap(), expected, "acc-{n}");
        }

        // A store that fails fails every lookup of the batch, as UNAVAILABLE.
        store.close().await;
        let failed = join_all(ids[..10].iter().map(|id| lookups.account(id))).await;
        assert!(failed.iter().all(|answer| matches!(answer, Err(QueryError::Store(_)))), "{failed:?}");
    }
}
