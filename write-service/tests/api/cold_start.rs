//! A write-service that starts cold under load: what every rolling deploy,
//! crash restart and scale-up does. The new replica has an empty cache and
//! must load each account it is asked about from a populated log.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream;
use shared::{event_log::EventLogArgs, proto::bank::v1::account_command_service_client::AccountCommandServiceClient};
use testkit::NatsServer;
use tokio::sync::watch;
use tonic::{Code, transport::Channel};

use crate::helpers::*;

const ACCOUNTS: usize = 10_000;
const EVENTS_PER_ACCOUNT: u64 = 10;
const IN_FLIGHT: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_under_load_on_a_large_log_fails_no_command_and_leaves_no_consumer() {
    // Given a log of 100,000 events over 10,000 accounts, and a warm
    // replica serving deposits at 64 in flight.
    let nats = NatsServer::start().await;
    let warm = TestApp::spawn(&nats.url()).await;
    let names = EventLogArgs { stream: STREAM.into(), subject_prefix: PREFIX.into() };
    let last = testkit::event_log::seed(&nats.url(), &names, "seed-", ACCOUNTS, EVENTS_PER_ACCOUNT).await.unwrap();
    assert_eq!(last, ACCOUNTS as u64 * EVENTS_PER_ACCOUNT);
    let load = Load::start(warm.client.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let consumers_before = consumer_count(&nats.url()).await;

    // When a new replica starts, takes the traffic, and the old one stops.
    let cold = TestApp::spawn(&nats.url()).await;
    let before_switch = load.switch_to(cold.client.clone());
    warm.stop().await;
    let mut most_consumers = consumers_before;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        most_consumers = most_consumers.max(consumer_count(&nats.url()).await);
    }
    let after_switch = load.stop().await;

    // Then the cold replica answered every command, having loaded thousands
    // of accounts, and never had more consumers on the stream than before.
    println!("warm replica: {before_switch:?}; cold replica: {after_switch:?}");
    let ok = after_switch.get(&Code::Ok).copied().unwrap_or(0);
    assert_eq!(after_switch.len(), 1, "the cold replica failed commands: {after_switch:?}");
    assert!(ok > 2_000, "the cold replica answered only {ok} commands in 5 s");
    assert_eq!(most_consumers, consumers_before, "a cold start left consumers on the stream");
}

/// Deposits of 1 on random seeded accounts, `IN_FLIGHT` at a time, against
/// whichever replica currently takes the traffic; counts the outcomes per
/// replica.
struct Load {
    target: watch::Sender<AccountCommandServiceClient<Channel>>,
    outcomes: Arc<Mutex<HashMap<Code, usize>>>,
    stopping: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(client: AccountCommandServiceClient<Channel>) -> Self {
        let (target, _) = watch::channel(client);
        let outcomes = Arc::new(Mutex::new(HashMap::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let workers = (0..IN_FLIGHT)
            .map(|_| {
                let (mut target, outcomes, stopping, next) =
                    (target.subscribe(), Arc::clone(&outcomes), Arc::clone(&stopping), Arc::clone(&next));
                tokio::spawn(async move {
                    while !stopping.load(Ordering::Relaxed) {
                        // A multiplicative hash spreads consecutive calls over
                        // every account, so the cold replica meets new ones.
                        let n = next.fetch_add(1, Ordering::Relaxed).wrapping_mul(7_919) % ACCOUNTS;
                        let mut client = target.borrow_and_update().clone();
                        let code = match client.deposit_funds(deposit(&format!("seed-{n}"), 1)).await {
                            Ok(_) => Code::Ok,
                            Err(status) => status.code(),
                        };
                        // An answer from a replica that lost the traffic
                        // meanwhile is not counted for the new one.
                        if !target.has_changed().unwrap_or(true) {
                            *outcomes.lock().unwrap().entry(code).or_insert(0) += 1;
                        }
                    }
                })
            })
            .collect();
        Self { target, outcomes, stopping, workers }
    }

    /// Sends the traffic to `client` from now on; returns the outcomes so far.
    fn switch_to(&self, client: AccountCommandServiceClient<Channel>) -> HashMap<Code, usize> {
        let outcomes = std::mem::take(&mut *self.outcomes.lock().unwrap());
        self.target.send_replace(client);
        outcomes
    }

    /// Stops the load; returns the outcomes since the last switch.
    async fn stop(self) -> HashMap<Code, usize> {
        self.stopping.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

async fn consumer_count(nats_url: &str) -> usize {
    let jetstream = jetstream::new(async_nats::connect(nats_url).await.unwrap());
    jetstream.get_stream(STREAM).await.unwrap().info().await.unwrap().state.consumer_count
}
