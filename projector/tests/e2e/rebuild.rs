//! `projector rebuild` gives the same read model.

use shared::proto::bank::v1 as pb;

use crate::{both_stores, helpers::*};

async fn snapshot(stack: &Stack, last: u64) -> Vec<(pb::Account, Vec<pb::HistoryEntry>)> {
    let request = pb::ListAccountsRequest { page_size: 500, min_position: last, ..Default::default() };
    let accounts = stack.queries.clone().list_accounts(request).await.unwrap().into_inner().accounts;
    let mut snapshot = Vec::new();
    for account in accounts {
        let history = stack.history(&account.account_id, last).await;
        snapshot.push((account, history));
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
