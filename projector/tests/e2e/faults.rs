//! The projector killed mid-burst, a read store that stalls, and the read
//! side while the projector is down.

use std::time::Duration;

use futures::{StreamExt, stream::FuturesUnordered};
use shared::proto::bank::v1 as pb;
use tonic::Code;

use crate::{both_stores, helpers::*};

const ACCOUNTS: usize = 8;

/// Deposits `rounds` × 1..=ACCOUNTS concurrently; returns the last position.
async fn burst(stack: &Stack, rounds: i64) -> u64 {
    let calls: FuturesUnordered<_> = (0..rounds)
        .flat_map(|round| (0..ACCOUNTS).map(move |i| (round, i)))
        .map(|(round, i)| async move { stack.deposit(&format!("acc-{i}"), round + 1).await.position })
        .collect();
    calls.fold(0, |last, position| async move { last.max(position) }).await
}

/// What `burst(rounds)` adds to each account's balance.
fn burst_total(rounds: i64) -> i64 {
    (1..=rounds).sum()
}

/// Every account's balance and history are exactly what the commands did:
/// `rounds` deposits per account adding up to `expected_balance`.
async fn assert_exact(stack: &Stack, rounds: i64, expected_balance: i64, last: u64) {
    for i in 0..ACCOUNTS {
        let id = format!("acc-{i}");
        let account = stack.account(&id, last).await;
        assert_eq!(account.balance, expected_balance, "{id}");
        assert_eq!(account.version, rounds as u64 + 1, "{id}");
        let history = stack.history(&id, last).await;
        let versions: Vec<u64> = history.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=rounds as u64 + 1).collect::<Vec<_>>(), "{id}: each event once, in order");
        assert_eq!(history.last().unwrap().balance_after, expected_balance);
    }
}

both_stores!(a_projector_killed_mid_burst_counts_every_event_exactly_once);
async fn a_projector_killed_mid_burst_counts_every_event_exactly_once(store: Store) {
    let mut stack = Stack::start_with(store, &[("PROJECTOR_BATCH_SIZE", "20")], &[]).await;
    for i in 0..ACCOUNTS {
        stack.open(&format!("acc-{i}"), "Owner").await;
    }
    stack.projector.kill().await;
    let rounds = 60;
    let writer = async {
        let mut last = 0;
        for _ in 0..3 {
            last = last.max(burst(&stack, rounds / 3).await);
        }
        last
    };
    let killer = async {
        // SIGKILL the projector twice while the burst runs, restart it each time.
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let mut projector =
                ProjectorProcess::spawn(&stack.nats.url(), &stack.store.url(), &[("PROJECTOR_BATCH_SIZE", "20")]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            projector.kill().await;
        }
    };
    let (last, ()) = tokio::join!(writer, killer);
    stack.restart_projector(&[("PROJECTOR_BATCH_SIZE", "20")]).await;
    assert_exact(&stack, rounds, 3 * burst_total(rounds / 3), last).await;
}

both_stores!(a_stalled_read_store_delays_but_never_reorders_or_drops);
async fn a_stalled_read_store_delays_but_never_reorders_or_drops(store: Store) {
    // A short ack wait: JetStream would redeliver during the stall if the
    // projector did not hold its batch with in-progress acks.
    let env = [("PROJECTOR_BATCH_SIZE", "16"), ("PROJECTOR_ACK_WAIT", "1s")];
    let stack = Stack::start_with(store, &env, &[]).await;
    for i in 0..ACCOUNTS {
        stack.open(&format!("acc-{i}"), "Owner").await;
    }
    let first = burst(&stack, 5).await;
    stack.account("acc-0", first).await;

    // Hold the checkpoint table's lock for longer than the ack wait.
    let lock = StoreLock::take(&stack.store).await;
    let during = burst(&stack, 10).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    lock.release().await;

    let last = during.max(burst(&stack, 5).await);
    assert_exact(&stack, 20, burst_total(5) + burst_total(10) + burst_total(5), last).await;
}

/// A writer lock on the read store, held by the test.
struct StoreLock(sqlx::Transaction<'static, sqlx::Any>);

impl StoreLock {
    async fn take(store: &Store) -> Self {
        sqlx::any::install_default_drivers();
        let url = match store {
            Store::Sqlite(_) => store.url(),
            Store::Postgres(url) => url.clone(),
        };
        let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        let take = match store {
            Store::Sqlite(_) => "UPDATE projection_checkpoints SET position = position",
            Store::Postgres(_) => "LOCK TABLE projection_checkpoints IN ACCESS EXCLUSIVE MODE",
        };
        sqlx::query(take).execute(&mut *tx).await.unwrap();
        Self(tx)
    }

    async fn release(self) {
        self.0.rollback().await.unwrap();
    }
}

both_stores!(with_the_projector_down_reads_are_stale_and_min_position_is_unavailable);
async fn with_the_projector_down_reads_are_stale_and_min_position_is_unavailable(store: Store) {
    let mut stack = Stack::start_with(store, &[], &["--max-consistency-wait", "500ms"]).await;
    stack.open("acc", "Owner").await;
    let seen = stack.deposit("acc", 10).await;
    stack.account("acc", seen.position).await;

    stack.projector.kill().await;
    let unseen = stack.deposit("acc", 5).await;
    // Plain queries still answer, from the stale read model.
    assert_eq!(stack.account("acc", 0).await.balance, 10);
    let request = pb::GetAccountRequest { account_id: "acc".into(), min_position: unseen.position };
    let status = stack.queries.clone().get_account(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("behind"), "{}", status.message());

    stack.restart_projector(&[]).await;
    assert_eq!(stack.account("acc", unseen.position).await.balance, 15);
}
