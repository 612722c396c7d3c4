//! The read model in partitions of the accounts on PostgreSQL, projected by
//! two projector processes that share them through leases; one of them is
//! SIGKILLed under load.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use shared::{events::AccountEvent, proto::bank::v1 as pb};
use sqlx::Row;
use tonic::Code;

use crate::helpers::*;

const PARTITIONS: u32 = 4;
const WRITERS: usize = 8;
const ACCOUNTS_PER_WRITER: usize = 4;

/// Which process (PostgreSQL backend pid) holds each partition's lease.
async fn lease_holders(store: &Store) -> BTreeMap<i64, i32> {
    let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect(&store.url()).await.unwrap();
    let rows = sqlx::query(
        "SELECT objid::int8 AS partition, pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND mode = 'ExclusiveLock' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    rows.iter().map(|row| (row.get::<i64, _>("partition"), row.get::<i32, _>("pid"))).collect()
}

/// Deposits on the writer's accounts in turn; after each, reads the account
/// with `min_position` = the deposit's position and checks the answer is
/// exactly the account as of that deposit. Returns how many reads were
/// checked and how many found the read model behind (UNAVAILABLE after
/// MAX_CONSISTENCY_WAIT: late, never wrong).
fn writer(stack: &Stack, writer: usize, stop: Arc<AtomicBool>, late: Arc<AtomicU64>) -> tokio::task::JoinHandle<u64> {
    let (mut commands, mut queries) = (stack.commands.clone(), stack.queries.clone());
    tokio::spawn(async move {
        let mut balances = [0i64; ACCOUNTS_PER_WRITER];
        let mut checked = 0;
        for n in 0usize.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let slot = n % ACCOUNTS_PER_WRITER;
            let account_id = format!("acc-{writer}-{slot}");
            let deposit = pb::DepositFundsRequest {
                account_id: account_id.clone(),
                amount: 1 + (n % 7) as i64,
                command_id: String::new(),
                expected_version: None,
            };
            let reply = commands.deposit_funds(deposit.clone()).await.unwrap().into_inner();
            balances[slot] += deposit.amount;
            let read = pb::GetAccountRequest { account_id: account_id.clone(), min_position: reply.position };
            match queries.get_account(read).await {
                Ok(account) => {
                    let account = account.into_inner();
                    assert_eq!(
                        (account.version, account.balance),
                        (reply.version, balances[slot]),
                        "{account_id} read at min_position {} is exactly the account as of that deposit",
                        reply.position
                    );
                    checked += 1;
                }
                Err(status) if status.code() == Code::Unavailable => {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                Err(status) => panic!("{account_id}: {status:?}"),
            }
        }
        checked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projectors_share_four_partitions_and_the_survivor_takes_over_a_killed_ones() {
    // Given the system on PostgreSQL with the read model in 4 partitions,
    // projected by two processes, and deposits on accounts of every
    // partition, each read back at its own position.
    let env = [("PROJECTOR_PARTITIONS", "4")];
    let mut stack = Stack::start_with(Store::postgres().await, &env, &[]).await;
    let survivor = ProjectorProcess::spawn(&stack.nats.url(), &stack.store.url(), &env).await;
    for w in 0..WRITERS {
        for slot in 0..ACCOUNTS_PER_WRITER {
            stack.open(&format!("acc-{w}-{slot}"), "Owner").await;
        }
    }
    let shared_out = testkit::eventually_some(Duration::from_secs(20), "both processes to hold 2 partitions", || {
        let store = &stack.store;
        async move {
            let holders = lease_holders(store).await;
            let mut per_process: BTreeMap<i32, usize> = BTreeMap::new();
            for pid in holders.values() {
                *per_process.entry(*pid).or_default() += 1;
            }
            (holders.len() == PARTITIONS as usize && per_process.values().all(|held| *held == 2)).then_some(holders)
        }
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let late = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..WRITERS).map(|w| writer(&stack, w, Arc::clone(&stop), Arc::clone(&late))).collect();

    // When one projector process is SIGKILLed mid-load.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let store = stack.read_store().await;
    let before = store.progress().await.unwrap();
    let killed_at = Instant::now();
    stack.projector.kill().await;
    let taken_over = testkit::eventually_some(Duration::from_secs(30), "the survivor to hold every partition", || {
        let store = &stack.store;
        let killed: Vec<i32> = shared_out.values().copied().collect();
        async move {
            let holders = lease_holders(store).await;
            let pids: std::collections::BTreeSet<i32> = holders.values().copied().collect();
            (holders.len() == PARTITIONS as usize && pids.len() == 1 && killed.iter().any(|pid| pids.contains(pid)))
                .then(|| killed_at.elapsed())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let mut checked = 0;
    for writer in writers {
        checked += writer.await.unwrap();
    }

    // Then every partition advanced past where it was at the kill...
    let mut stream = stack.jetstream().await.get_stream(STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let progress = testkit::eventually_some(Duration::from_secs(30), "every partition to reach the log's end", || {
        let store = &store;
        async move { store.progress().await.ok().filter(|p| p.of_all(read_model::Projection::AccountHistory) >= last) }
    })
    .await;
    assert_eq!(progress.partitions(), PARTITIONS);
    for partition in 0..PARTITIONS {
        assert!(
            progress.partition(partition).min() > before.partition(partition).min(),
            "partition {partition} advanced"
        );
    }
    // ...the reads stayed exact throughout...
    assert!(checked > 200, "the load ran: {checked} reads checked");
    // ...and the read model is the fold of the log, each event applied once.
    let mut folded: BTreeMap<String, (i64, u64)> = BTreeMap::new();
    for sequence in 1..=last {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        let entry = folded.entry(header("ce-subject")).or_default();
        entry.1 += 1;
        if let AccountEvent::Deposited { amount } =
            AccountEvent::decode(Some(&header("ce-type")), &header("ce-subject"), &message.payload).unwrap()
        {
            entry.0 += amount;
        }
    }
    for (account_id, (balance, version)) in &folded {
        let account = stack.account(account_id, last).await;
        assert_eq!((account.balance, account.version), (*balance, *version), "{account_id}");
        assert_eq!(stack.history(account_id, last).await.len() as u64, *version, "{account_id}'s history");
    }
    eprintln!(
        "partitions: the survivor held every partition {:.2} s after the kill; {checked} reads at their own \
         position were exact, {} found the read model behind (UNAVAILABLE after MAX_CONSISTENCY_WAIT)",
        taken_over.as_secs_f64(),
        late.load(Ordering::Relaxed)
    );
    drop(survivor);
}
