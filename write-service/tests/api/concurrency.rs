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

/// The `cqrs_command_attempts` histogram of a write-service's `/metrics`:
/// (upper bound, cumulative count) per bucket.
async fn attempts_histogram(metrics: u16) -> Vec<(String, u64)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], metrics));
    let (status, body) = testkit::prometheus::get(addr, "/metrics").await.expect("the metrics endpoint answers");
    assert_eq!(status, 200);
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|line| line.starts_with("cqrs_command_attempts_bucket{") && line.contains("DepositFunds"))
        .filter_map(|line| {
            let le = line.split("le=\"").nth(1)?.split('"').next()?.to_owned();
            let count = line.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_hot_account_at_a_moderate_rate_abort_nothing() {
    // Given two replicas (processes, each with its metrics endpoint) and one
    // account, four clients on each sending a deposit every 3 ms (about
    // 1,600 a second on this one account here) for three seconds. (Back to
    // back, with no pause, the loser of a race can still lose ten in a row:
    // ABORTED, the client retries.)
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(3);
    let nats = NatsServer::start().await;
    let metrics = [testkit::free_port(), testkit::free_port()];
    let mut replicas = Vec::new();
    for port in metrics {
        let port = port.to_string();
        let env = [
            ("OTEL_SDK_DISABLED", "false"),
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1"),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", port.as_str()),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ];
        replicas.push(ServiceProcess::spawn_with(&nats.url(), &env).await);
    }
    let (a, b) = (&replicas[0], &replicas[1]);
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

    // Then nothing was ABORTED, and each replica's metrics say how often a
    // deposit had to be decided again after losing a race (bounded: the
    // last bucket is the service's limit of 10).
    let mut buckets: Vec<(String, u64)> = Vec::new();
    for port in metrics {
        for (le, count) in attempts_histogram(port).await {
            match buckets.iter_mut().find(|(bound, _)| *bound == le) {
                Some((_, total)) => *total += count,
                None => buckets.push((le, count)),
            }
        }
    }
    let decided = buckets.iter().find(|(le, _)| le == "+Inf").map_or(0, |(_, count)| *count);
    let within_ten = buckets.iter().find(|(le, _)| le == "10").map_or(0, |(_, count)| *count);
    eprintln!(
        "hot account: {ok} deposits in 3 s, {aborted} ABORTED; decisions per deposit, cumulative: {}",
        buckets.iter().map(|(le, count)| format!("<={le}: {count}")).collect::<Vec<_>>().join(", ")
    );
    assert_eq!(aborted, 0, "{aborted} of {} deposits were ABORTED", ok + aborted);
    assert_eq!(decided, ok, "every deposit's decisions are counted");
    assert_eq!(within_ten, decided, "no deposit was decided more than 10 times");
}
