//! `projector rebuild` gives the same read model.

use shared::proto::bank::v1 as pb;

use crate::{both_stores, helpers::*};

async fn snapshot(stack: &Stack, last: u64) -> Vec<(pb::Account, Vec<pb::HistoryEntry>)> {
    let request = pb::ListAccountsRequest { page_size: 500, min_position: last, ..Default::default() };
    let accounts = stack.queries.clone().list_accounts(request).await.unwrap().into_inner().accounts;
    let mut snapshot = Vec::new();
    for account in accounts {
        let history = stack.history(&account.account_id, last).await;
        snapshot.push(facts(account, history));
    }
    snapshot
}

both_stores!(rebuild_replays_a_projection_into_the_same_read_model);
async fn rebuild_replays_a_projection_into_the_same_read_model(store: Store) {
    let stack = Stack::start(store).await;
    let mut last = 0;
    for i in 0..5 {
        let id = format!("acc-{i}");
        stack.open(&id, "Owner").await;
        for amount in 1..=4 {
            stack.deposit(&id, amount * 10).await;
        }
        last = stack.withdraw(&id, 5).await.position;
    }
    let before = snapshot(&stack, last).await;
    assert_eq!(before.len(), 5);

    // While the projector keeps running.
    let output = projector_command(&stack.nats.url(), &stack.store.url())
        .args(["rebuild", "--projection", "account_history"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("rebuilt account_history: {last} events")), "{stdout}");
    assert!(stdout.contains("events/s"), "{stdout}");
    assert_eq!(snapshot(&stack, last).await, before);

    // Every projection, with new events arriving after.
    let output = projector_command(&stack.nats.url(), &stack.store.url()).arg("rebuild").output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(snapshot(&stack, last).await, before);
    let next = stack.deposit("acc-0", 1).await;
    assert_eq!(stack.account("acc-0", next.position).await.balance, before[0].0.balance + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_partition_count_is_a_rebuild_and_a_projector_of_the_old_count_refuses_to_start() {
    // Given a read model in one partition on PostgreSQL.
    let mut stack = Stack::start(Store::postgres().await).await;
    let mut last = 0;
    for i in 0..8 {
        let id = format!("acc-{i}");
        stack.open(&id, "Owner").await;
        last = stack.deposit(&id, 10 + i).await.position;
    }
    let before = snapshot(&stack, last).await;

    // When the projector is stopped and the read model rebuilt in 4 (which
    // takes saying so).
    stack.projector.kill().await;
    let rebuild = |args: &[&str]| {
        let mut command = projector_command(&stack.nats.url(), &stack.store.url());
        command.env("PROJECTOR_PARTITIONS", "4").arg("rebuild").args(args);
        command
    };
    let output = rebuild(&[]).output().await.unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("run `projector rebuild --repartition`"));
    let output = rebuild(&["--repartition"]).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("laying the read model out in 4 partition(s) (was 1)"));

    // Then a projector of the old count refuses, with what to do...
    let output = projector_command(&stack.nats.url(), &stack.store.url())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "the read model is projected in 4 partition(s), not 1: run `projector rebuild` with PROJECTOR_PARTITIONS=1"
        ),
        "{stderr}"
    );
    // ...and one of the new count carries on from the same read model.
    stack.restart_projector(&[("PROJECTOR_PARTITIONS", "4")]).await;
    assert_eq!(snapshot(&stack, last).await, before);
    let next = stack.deposit("acc-3", 1).await;
    assert_eq!(stack.account("acc-3", next.position).await.balance, before[3].0.balance + 1);
}
