//! The event log on a three-server JetStream cluster with the production
//! settings (R3 stream, `sync_interval: always`), written by two
//! write-service replicas, while servers die and freeze under them.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use shared::{events::AccountEvent, proto::bank::v1 as pb};
use testkit::{cluster::NatsCluster, free_port};
use tokio::process::Child;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{helpers::*, telemetry::service_command};

/// Writers, each on its own account.
const WRITERS: usize = 8;

/// One acknowledged deposit, as its client saw it.
struct Acknowledged {
    command_id: String,
    /// From the first attempt to the acknowledgement (retries included).
    took: Duration,
    attempts: u32,
    acknowledged_at: Instant,
}

/// The longest time without any acknowledgement between `from` and `to`.
fn longest_gap(acknowledged: &[Acknowledged], from: Instant, to: Instant) -> Duration {
    let mut times: Vec<Instant> =
        acknowledged.iter().map(|a| a.acknowledged_at).filter(|t| (from..to).contains(t)).collect();
    times.sort_unstable();
    times.insert(0, from);
    times.push(to);
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

fn spawn_binary(name: &str, env: &[(&str, String)]) -> (SocketAddr, Child) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    (addr, service_command(name, addr, env).spawn().unwrap())
}

/// Deposits on the writer's account, alternating between the write replicas (so
/// each replica's cached state is behind the other's every time), each
/// retried with its `command_id` while the answer is UNAVAILABLE or
/// DEADLINE_EXCEEDED (an unknown outcome), until `stop`.
fn writer(
    writer: usize,
    replicas: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Acknowledged>> {
    tokio::spawn(async move {
        let clients: Vec<_> = replicas
            .iter()
            .map(|addr| pb::account_command_service_client::AccountCommandServiceClient::new(channel(*addr)))
            .collect();
        let mut acknowledged = Vec::new();
        for n in 0usize.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let request = pb::DepositFundsRequest {
                // One writer per account: contention between replicas on one
                // hot account is a test of its own.
                account_id: format!("acc-{writer}"),
                amount: 1,
                command_id: format!("w{writer}-{n}"),
                expected_version: None,
            };
            let started = Instant::now();
            let mut attempts = 0;
            loop {
                attempts += 1;
                let mut client = clients[(n + attempts as usize) % clients.len()].clone();
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(Duration::from_secs(10));
                match client.deposit_funds(call).await {
                    Ok(_) => break,
                    // UNAVAILABLE, DEADLINE_EXCEEDED, or this client's own
                    // deadline (tonic: CANCELLED, "Timeout expired").
                    Err(status)
                        if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled) =>
                    {
                        if status.code() == Code::Cancelled {
                            eprintln!("cluster: {} took more than 10 s", request.command_id);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(status) => panic!("{}: not an unknown outcome but {status:?}", request.command_id),
                }
            }
            acknowledged.push(Acknowledged {
                command_id: request.command_id,
                took: started.elapsed(),
                attempts,
                acknowledged_at: Instant::now(),
            });
        }
        acknowledged
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_write_replicas_lose_nothing_when_the_stream_leader_dies_or_a_server_freezes() {
    // Given a 3-server cluster, two write replicas, the projector and the
    // read side, and sustained deposits.
    let mut cluster = NatsCluster::start(3).await;
    let store = Store::sqlite();
    let env = vec![
        ("NATS_URL", cluster.url()),
        ("READ_STORE_URL", store.url()),
        ("EVENT_STREAM_REPLICAS", "3".to_owned()),
        ("NATS_REQUEST_TIMEOUT", std::env::var("CLUSTER_NATS_REQUEST_TIMEOUT").unwrap_or_else(|_| "5s".into())),
        ("OTEL_SDK_DISABLED", "true".to_owned()),
        ("RUST_LOG", "error".to_owned()),
    ];
    let mut children = Vec::new();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let (addr, child) = spawn_binary("write-service", &env);
        wait_for_health(addr, ServingStatus::Serving).await;
        replicas.push(addr);
        children.push(child);
    }
    let (projector_addr, projector) = spawn_binary("projector", &env);
    let (read_addr, read) = spawn_binary("read-service", &env);
    children.extend([projector, read]);
    wait_for_health(projector_addr, ServingStatus::Serving).await;
    wait_for_health(read_addr, ServingStatus::Serving).await;
    let mut commands = pb::account_command_service_client::AccountCommandServiceClient::new(channel(replicas[0]));
    for i in 0..WRITERS {
        let open =
            pb::OpenAccountRequest { account_id: format!("acc-{i}"), owner: "Owner".into(), command_id: String::new() };
        commands.open_account(open).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS).map(|w| writer(w, replicas.clone(), Arc::clone(&stop))).collect();

    // When a server a write replica is connected to (not the stream leader)
    // is killed and comes back; then the stream leader is killed, comes
    // back, and later the new leader freezes for 10 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = cluster.stream_leader(STREAM).await.expect("the stream has a leader");
    let follower = cluster.servers_with_client("write-service").await.into_iter().find(|server| *server != leader);
    let follower_killed = Instant::now();
    match &follower {
        Some(follower) => {
            eprintln!("cluster: killing {follower}, a write replica's server (the leader is {leader})");
            cluster.kill(follower).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.restart(follower).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        None => eprintln!("cluster: both write replicas are on the leader {leader}; no follower to kill"),
    }
    let follower_done = Instant::now();
    let leader = cluster.stream_leader(STREAM).await.expect("the stream has a leader");
    eprintln!("cluster: killing the stream leader {leader}");
    let killed = Instant::now();
    cluster.kill(&leader).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.restart(&leader).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let frozen = cluster.stream_leader(STREAM).await.expect("the stream has a leader again");
    eprintln!("cluster: freezing the stream leader {frozen} for 10 s");
    let freezing = Instant::now();
    cluster.freeze(&frozen).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    cluster.thaw(&frozen).await;
    let thawed = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }

    // Then every acknowledged deposit is in the log exactly once...
    let client = async_nats::connect(cluster.url().split(',').map(str::to_owned).collect::<Vec<_>>()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client).get_stream(STREAM).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut log = Vec::new();
    for sequence in 1..=last {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        let event = AccountEvent::decode(Some(&header("ce-type")), &header("ce-subject"), &message.payload).unwrap();
        log.push((header("ce-subject"), header("ce-commandid"), event));
    }
    let mut in_log: Vec<&str> = log
        .iter()
        .filter(|(_, _, e)| matches!(e, AccountEvent::Deposited { .. }))
        .map(|(_, c, _)| c.as_str())
        .collect();
    in_log.sort_unstable();
    let mut expected: Vec<&str> = acknowledged.iter().map(|a| a.command_id.as_str()).collect();
    expected.sort_unstable();
    assert!(expected.len() > 100, "the load ran: {} acknowledged", expected.len());
    assert_eq!(in_log, expected, "the deposits in the log are exactly the acknowledged commands, each once");

    // ...and the read model is the fold of the log.
    let queries = pb::account_query_service_client::AccountQueryServiceClient::new(channel(read_addr));
    let mut folded: BTreeMap<&str, (i64, u64)> = BTreeMap::new();
    for (account, _, event) in &log {
        let entry = folded.entry(account.as_str()).or_default();
        entry.1 += 1;
        if let AccountEvent::Deposited { amount } = event {
            entry.0 += amount;
        }
    }
    for (account, (balance, version)) in folded {
        let request = pb::GetAccountRequest { account_id: account.into(), min_position: last };
        let found = testkit::eventually_some(Duration::from_secs(60), "the read model to catch up", || {
            let mut queries = queries.clone();
            let request = request.clone();
            async move { queries.get_account(request).await.ok().map(tonic::Response::into_inner) }
        })
        .await;
        assert_eq!((found.balance, found.version), (balance, version), "{account}");
    }

    let longest = acknowledged.iter().max_by_key(|a| a.took).unwrap();
    let retried = acknowledged.iter().filter(|a| a.attempts > 1).count();
    eprintln!(
        "cluster: {} deposits acknowledged, {retried} after a retry; the longest took {:.2} s over {} attempts; \
         writes unavailable at most {} after a write replica's server (a follower) was killed, {:.2} s after the \
         leader was killed, {:.2} s while the leader was frozen (10 s)",
        acknowledged.len(),
        longest.took.as_secs_f64(),
        longest.attempts,
        follower.map_or("(not run)".to_owned(), |_| format!(
            "{:.2} s",
            longest_gap(&acknowledged, follower_killed, follower_done).as_secs_f64()
        )),
        longest_gap(&acknowledged, killed, freezing).as_secs_f64(),
        longest_gap(&acknowledged, freezing, thawed + Duration::from_secs(2)).as_secs_f64(),
    );
    drop(children);
}
