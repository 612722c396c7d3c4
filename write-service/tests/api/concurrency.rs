//! Two write-service replicas (separate caches) on one account.

use futures::stream::FuturesUnordered;
use shared::proto::bank::v1 as pb;
use testkit::NatsServer;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn two_writers_never_both_succeed_at_the_same_version() {
    let nats = NatsServer::start().await;
    let a = TestApp::spawn(&nats.url()).await;
    let b = TestApp::spawn(&nats.url()).await;
    a.client.clone().open_account(open("shared")).await.unwrap();
    a.client.clone().deposit_funds(deposit("shared", 1_000)).await.unwrap();
    // Let b cache the account too, so both decide on their own cached state.
    b.client.clone().deposit_funds(deposit("shared", 1)).await.unwrap();

    let mut version = 3;
    for round in 0..25 {
        let request = pb::WithdrawFundsRequest { expected_version: Some(version), ..withdraw("shared", 1) };
        let (mut client_a, mut client_b) = (a.client.clone(), b.client.clone());
        let (ra, rb) = tokio::join!(client_a.withdraw_funds(request.clone()), client_b.withdraw_funds(request));
        let winners: Vec<_> = [&ra, &rb].into_iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {ra:?} / {rb:?}");
        assert_eq!(winners[0].get_ref().version, version + 1);
        let loser = [ra, rb].into_iter().find_map(Result::err).unwrap();
        assert_eq!(loser.code(), Code::Aborted, "round {round}: {loser:?}");
        version += 1;
    }
    assert_eq!(count_events(&nats.url(), "shared").await as u64, version);
}

#[tokio::test]
async fn concurrent_deposits_without_expected_version_all_land_once() {
    let nats = NatsServer::start().await;
    let a = TestApp::spawn(&nats.url()).await;
    let b = TestApp::spawn(&nats.url()).await;
    a.client.clone().open_account(open("busy")).await.unwrap();

    let calls: FuturesUnordered<_> = (0..80)
        .map(|i| {
            let mut client = if i % 2 == 0 { a.client.clone() } else { b.client.clone() };
            async move { client.deposit_funds(deposit("busy", 1)).await.map(|r| r.into_inner()) }
        })
        .collect();
    let (ok, errors) = collect(calls).await;
    // Contention is retried inside the service; only extreme contention
    // surfaces as ABORTED, and then the deposit did not happen.
    assert!(errors.iter().all(|code| *code == Code::Aborted), "{errors:?}");
    let mut versions: Vec<u64> = ok.iter().map(|reply| reply.version).collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), ok.len(), "two deposits got the same version");
    assert_eq!(count_events(&nats.url(), "busy").await, 1 + ok.len());
    assert!(ok.len() >= 40, "only {} of 80 deposits succeeded", ok.len());

    // Both replicas now decide on the same, complete state.
    let next = a.client.clone().deposit_funds(deposit("busy", 1)).await.unwrap().into_inner();
    assert_eq!(next.version as usize, 2 + ok.len());
    let next = b.client.clone().withdraw_funds(withdraw("busy", ok.len() as i64 + 1)).await.unwrap().into_inner();
    assert_eq!(next.version as usize, 3 + ok.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_hot_account_at_a_moderate_rate_abort_nothing() {
    // Given two replicas and one account, four clients on each sending a
    // deposit every 3 ms (about 1,600 a second on this one account here)
    // for three seconds. (Back to back, with no pause, the loser of a race
    // can still lose ten in a row: ABORTED, the client retries.)
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(3);
    let nats = NatsServer::start().await;
    let a = TestApp::spawn(&nats.url()).await;
    let b = TestApp::spawn(&nats.url()).await;
    a.client.clone().open_account(open("hot")).await.unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let mut client = if i % 2 == 0 { a.client.clone() } else { b.client.clone() };
            tokio::spawn(async move {
                let (mut ok, mut aborted) = (0, 0);
                while std::time::Instant::now() < until {
                    match client.deposit_funds(deposit("hot", 1)).await {
                        Ok(_) => ok += 1,
                        Err(status) if status.code() == Code::Aborted => aborted += 1,
                        Err(status) => panic!("{status:?}"),
                    }
                    tokio::time::sleep(PAUSE).await;
                }
                (ok, aborted)
            })
        })
        .collect();
    let (mut ok, mut aborted) = (0, 0);
    for client in clients {
        let (o, x) = client.await.unwrap();
        ok += o;
        aborted += x;
    }
    eprintln!("hot account: {ok} deposits in 3 s, {aborted} ABORTED");
    assert_eq!(aborted, 0, "{aborted} of {} deposits were ABORTED", ok + aborted);
}
