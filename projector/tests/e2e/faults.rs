//! The projector killed mid-burst, a read store that stalls, and the read
//! side while the projector is down.

use std::time::Duration;

use futures::{StreamExt, stream::FuturesUnordered};
use prost::Message;
use shared::proto::bank::v1::{self as pb, account_command_service_client::AccountCommandServiceClient};
use testkit::postgres::PostgresServer;
use tonic::{Code, transport::Channel};

use crate::{both_stores, helpers::*};

const ACCOUNTS: usize = 8;

/// Deposits `rounds` × 1..=ACCOUNTS concurrently; returns the last position.
async fn burst(stack: &Stack, rounds: i64) -> u64 {
    burst_through(&stack.commands, rounds).await
}

/// [`burst`] of `rounds / 3` three times, one after the other, so that a
/// fault injected meanwhile lands between and inside bursts; returns the
/// last position.
async fn bursts_in_three(stack: &Stack, rounds: i64) -> u64 {
    let mut last = 0;
    for _ in 0..3 {
        last = last.max(burst(stack, rounds / 3).await);
    }
    last
}

/// [`burst`] through a client of the write-service.
async fn burst_through(commands: &AccountCommandServiceClient<Channel>, rounds: i64) -> u64 {
    let calls: FuturesUnordered<_> = (0..rounds)
        .flat_map(|round| (0..ACCOUNTS).map(move |i| (round, i)))
        .map(|(round, i)| async move {
            let request = pb::DepositFundsRequest {
                account_id: format!("acc-{i}"),
                amount: round + 1,
                command_id: String::new(),
                expected_version: None,
            };
            commands.clone().deposit_funds(request).await.unwrap().into_inner().position
        })
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
    let writer = bursts_in_three(&stack, rounds);
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

/// A read store that stalls while the log keeps growing: the projector
/// holds no more than its consumer lets it (`max_ack_pending` = 2 × batch),
/// so tens of megabytes of events wait in JetStream, not in its memory, and
/// it catches up once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_read_store_leaves_the_backlog_in_the_log_not_in_memory() {
    const BATCH: u64 = 100;
    const EVENTS: u64 = 20_000;
    const PADDING: usize = 2_000;
    let batch = BATCH.to_string();
    let stack = Stack::start_with(Store::sqlite(), &[("PROJECTOR_BATCH_SIZE", &batch)], &[]).await;
    let opened = stack.open("big", "Owner").await;
    stack.account("big", opened.position).await;
    let pid = stack.projector.child.id().unwrap();
    let before = rss_mib(pid);

    let lock = StoreLock::take(&stack.store).await;
    // Deposits appended straight to the log, each padded to ~2 KB with a
    // field the schema does not have (decoders skip unknown fields): 40 MB
    // of backlog.
    let jetstream = stack.jetstream().await;
    let mut payload = pb::FundsDeposited { account_id: "big".into(), amount: 1 }.encode_to_vec();
    payload.extend_from_slice(&[15 << 3 | 2, 0xd0, 0x0f]); // field 15, length-delimited, 2000 bytes
    payload.extend(std::iter::repeat_n(b'x', PADDING));
    let payload = bytes::Bytes::from(payload);
    let mut last = 0;
    for chunk in (2..EVENTS + 2).collect::<Vec<_>>().chunks(500) {
        let mut acks = Vec::new();
        for version in chunk {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("ce-type", "bank.v1.FundsDeposited");
            headers.insert("ce-subject", "big");
            headers.insert("ce-aggregateversion", version.to_string().as_str());
            headers.insert("ce-time", "2026-11-26T10:00:00Z");
            acks.push(jetstream.publish_with_headers("test.account.big", headers, payload.clone()).await.unwrap());
        }
        for ack in acks {
            last = ack.await.unwrap().sequence;
        }
    }

    // Wait until the projector holds what it may (a batch, stuck in its
    // transaction), then watch its memory while the rest waits in the log.
    let stream = jetstream.get_stream(STREAM).await.unwrap();
    let consumer = testkit::eventually_some(Duration::from_secs(20), "the projector to hold a batch", || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info("projector").await.ok()?.clone();
            (info.num_ack_pending as u64 >= BATCH - 1).then_some(info)
        }
    })
    .await;
    let mut peak = before;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss_mib(pid));
    }
    println!(
        "projector RSS {before:.1} MiB before, {peak:.1} MiB at most while {} events waited ({} unacked)",
        consumer.num_pending, consumer.num_ack_pending
    );
    assert!(consumer.num_ack_pending as u64 <= 2 * BATCH, "{consumer:?}");
    assert!(consumer.num_pending + consumer.num_ack_pending as u64 >= EVENTS - 2 * BATCH, "{consumer:?}");
    assert!(peak - before < 16.0, "the projector grew from {before:.1} to {peak:.1} MiB with a stalled store");

    lock.release().await;
    // 20,000 events to catch up on, after the projector's retry backoff.
    let account = stack.account_within(Duration::from_secs(120), "big", last).await;
    assert_eq!(account.balance, EVENTS as i64);
    assert_eq!(account.version, EVENTS + 1);
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

/// What one command ended as, from the client's side.
struct Sent {
    command_id: String,
    account: String,
    amount: i64,
    outcome: Result<pb::CommandReply, tonic::Status>,
}

/// The log's events, in order: (account, command id, event).
async fn read_log(stack: &Stack) -> Vec<(String, String, shared::events::AccountEvent)> {
    let jetstream = stack.jetstream().await;
    let mut stream = jetstream.get_stream(STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut events = Vec::new();
    for sequence in 1..=last {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        let event =
            shared::events::AccountEvent::decode(Some(&header("ce-type")), &header("ce-subject"), &message.payload)
                .unwrap();
        events.push((header("ce-subject"), header("ce-commandid"), event));
    }
    events
}

both_stores!(nats_killed_under_write_load_loses_no_acknowledged_command);
async fn nats_killed_under_write_load_loses_no_acknowledged_command(store: Store) {
    let mut stack = Stack::start(store).await;
    for i in 0..ACCOUNTS {
        stack.open(&format!("acc-{i}"), "Owner").await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 16 writers, each sending deposits with its own command ids, until told to stop.
    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let mut commands = stack.commands.clone();
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let request = pb::DepositFundsRequest {
                        account_id: format!("acc-{}", (writer + n) % ACCOUNTS),
                        amount: (n % 7 + 1) as i64,
                        command_id: format!("w{writer}-{n}"),
                        expected_version: None,
                    };
                    let outcome = commands.deposit_funds(request.clone()).await.map(|r| r.into_inner());
                    if outcome.is_err() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    sent.push(Sent {
                        command_id: request.command_id,
                        account: request.account_id,
                        amount: request.amount,
                        outcome,
                    });
                }
                sent
            })
        })
        .collect();

    // Kill NATS (SIGKILL) in the middle of the load, bring it back, let the
    // load run on a little, then stop it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stack.nats.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.nats.restart().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = Vec::new();
    for writer in writers {
        sent.extend(writer.await.unwrap());
    }

    // Every failure was UNAVAILABLE; retrying it with its command_id
    // succeeds exactly once (it may have landed before the failure).
    let (ok, failed): (Vec<_>, Vec<_>) = sent.into_iter().partition(|s| s.outcome.is_ok());
    assert!(ok.len() > 100, "the load ran: {} acknowledged", ok.len());
    assert!(!failed.is_empty(), "the outage was felt by the clients");
    let mut commands = stack.commands.clone();
    let mut acknowledged: Vec<(String, String, i64)> =
        ok.iter().map(|s| (s.command_id.clone(), s.account.clone(), s.amount)).collect();
    for command in &failed {
        let status = command.outcome.as_ref().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{}: {status:?}", command.command_id);
        let retry = pb::DepositFundsRequest {
            account_id: command.account.clone(),
            amount: command.amount,
            command_id: command.command_id.clone(),
            expected_version: None,
        };
        let mut attempts = 0;
        loop {
            match commands.deposit_funds(retry.clone()).await {
                Ok(_) => break,
                Err(status) if status.code() == Code::Unavailable && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("retry of {} failed: {status:?}", command.command_id),
            }
        }
        acknowledged.push((command.command_id.clone(), command.account.clone(), command.amount));
    }

    // The log holds each acknowledged command exactly once, and nothing else.
    let log = read_log(&stack).await;
    let mut in_log: Vec<&str> = log
        .iter()
        .filter(|(_, _, e)| matches!(e, shared::events::AccountEvent::Deposited { .. }))
        .map(|(_, c, _)| c.as_str())
        .collect();
    in_log.sort_unstable();
    let mut expected: Vec<&str> = acknowledged.iter().map(|(c, _, _)| c.as_str()).collect();
    expected.sort_unstable();
    assert_eq!(in_log, expected, "the deposits in the log are exactly the acknowledged commands, each once");

    // After the projector catches up, the read model is the fold of the log.
    let last = log.len() as u64;
    for i in 0..ACCOUNTS {
        let id = format!("acc-{i}");
        let (mut balance, mut version) = (0, 0);
        for (_, _, event) in log.iter().filter(|(account, _, _)| *account == id) {
            version += 1;
            if let shared::events::AccountEvent::Deposited { amount } = event {
                balance += amount;
            }
        }
        let account = stack.account_within(Duration::from_secs(30), &id, last).await;
        assert_eq!((account.balance, account.version), (balance, version), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_under_the_projector_lose_nothing() {
    let store = Store::postgres().await;
    let database = store.url().rsplit_once('/').unwrap().1.to_owned();
    let admin_url =
        std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let stack = Stack::start_with(store, &[("PROJECTOR_BATCH_SIZE", "20")], &[]).await;
    for i in 0..ACCOUNTS {
        stack.open(&format!("acc-{i}"), "Owner").await;
    }
    // What a PostgreSQL restart does to its clients, without restarting the
    // server other tests share: every connection to the read store is
    // terminated, three times while the load runs.
    let terminator = async {
        let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin_url).await.unwrap();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let sql = format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{database}' AND pid <> pg_backend_pid()"
            );
            sqlx::Executor::execute(&mut admin, sqlx::AssertSqlSafe(sql)).await.unwrap();
        }
    };
    let rounds = 60;
    let writer = bursts_in_three(&stack, rounds);
    let (last, ()) = tokio::join!(writer, terminator);
    // The read-service lost its connections too: its pool reconnects.
    let account = stack.account_within(Duration::from_secs(30), "acc-0", last).await;
    assert_eq!(account.version, rounds as u64 + 1);
    assert_exact(&stack, rounds, 3 * burst_total(rounds / 3), last).await;
}

/// The read store's server itself crashes (PostgreSQL stopped with `-m
/// immediate`: every process killed, no shutdown checkpoint) and comes back
/// while commands go on: the projector waits and reconnects, the
/// read-service's pool too, and every event is applied once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_and_restarted_under_the_projector_loses_nothing() {
    let mut postgres = PostgresServer::start().await;
    let stack = Stack::start_with(Store::Postgres(postgres.url()), &[("PROJECTOR_BATCH_SIZE", "20")], &[]).await;
    for i in 0..ACCOUNTS {
        stack.open(&format!("acc-{i}"), "Owner").await;
    }
    let rounds = 60;
    let first = burst(&stack, rounds / 3).await;
    stack.account("acc-0", first).await;

    postgres.crash().await;
    // The write side does not need the read store: commands go on.
    let during = burst(&stack, rounds / 3).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    postgres.start_again().await;
    let last = during.max(burst(&stack, rounds / 3).await);

    let account = stack.account_within(Duration::from_secs(30), "acc-0", last).await;
    assert_eq!(account.version, rounds as u64 + 1);
    assert_exact(&stack, rounds, 3 * burst_total(rounds / 3), last).await;
}

both_stores!(a_restarted_read_service_answers_the_same_and_catches_up);
async fn a_restarted_read_service_answers_the_same_and_catches_up(store: Store) {
    let mut stack = Stack::start(store).await;
    for i in 0..ACCOUNTS {
        stack.open(&format!("acc-{i}"), "Owner").await;
    }
    let rounds = 30;
    let first = burst(&stack, rounds / 2).await;
    let mut before = Vec::new();
    for i in 0..ACCOUNTS {
        before.push(stack.account(&format!("acc-{i}"), first).await);
    }

    // Restart it while writes go on: the new one answers at least what the
    // old one did, and read-your-writes holds across the restart.
    let commands = stack.commands.clone();
    let (last, ()) = tokio::join!(burst_through(&commands, rounds / 2), stack.restart_read_service());
    for (i, earlier) in before.iter().enumerate() {
        let now = stack.account(&format!("acc-{i}"), first).await;
        assert!(now.version >= earlier.version && now.balance >= earlier.balance, "{earlier:?} then {now:?}");
    }
    assert_exact(&stack, rounds, 2 * burst_total(rounds / 2), last).await;
}
