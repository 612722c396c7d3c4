//! Faults: NATS missing or killed, write-service killed with SIGKILL or
//! stopped with SIGTERM mid-burst.

use futures::stream::FuturesUnordered;
use shared::proto::bank::v1 as pb;
use testkit::{NatsServer, free_port};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::*;

#[tokio::test]
async fn not_serving_until_nats_is_up_then_serving() {
    let port = free_port();
    let app = TestApp::spawn_with(config(&format!("nats://127.0.0.1:{port}"), &[])).await;
    app.wait_for_health(ServingStatus::NotServing).await;
    assert_status(app.client.clone().open_account(open("early")).await, Code::Unavailable, "retry");

    let nats = NatsServer::start_on(port).await;
    app.wait_for_health(ServingStatus::Serving).await;
    assert_eq!(app.client.clone().open_account(open("early")).await.unwrap().into_inner().version, 1);
    assert_eq!(count_events(&nats.url(), "early").await, 1);
}

#[tokio::test]
async fn a_list_of_nats_urls_reaches_the_server_that_answers() {
    // A cluster's URLs, comma-separated, the first of them down.
    let nats = NatsServer::start().await;
    let urls = format!("nats://127.0.0.1:{},{}", free_port(), nats.url());
    let app = TestApp::spawn(&urls).await;
    assert_eq!(app.client.clone().open_account(open("listed")).await.unwrap().into_inner().version, 1);
}

#[tokio::test]
async fn losing_nats_means_unavailable_and_not_serving_until_it_is_back() {
    let mut nats = NatsServer::start().await;
    let app = TestApp::spawn(&nats.url()).await;
    let mut client = app.client.clone();
    client.open_account(open("acc")).await.unwrap();
    client.deposit_funds(deposit("acc", 100)).await.unwrap();

    nats.kill().await;
    app.wait_for_health(ServingStatus::NotServing).await;
    // Not ready, but alive: a liveness probe must not restart the pod over
    // an outage that a restart cannot fix.
    assert_eq!(app.liveness().await, Some(ServingStatus::Serving));
    let retried = pb::DepositFundsRequest { command_id: "during-outage".into(), ..deposit("acc", 5) };
    assert_status(client.deposit_funds(retried.clone()).await, Code::Unavailable, "same command_id");

    nats.restart().await;
    app.wait_for_health(ServingStatus::Serving).await;
    // The retry of the failed command succeeds once; the state survived.
    let reply = client.deposit_funds(retried.clone()).await.unwrap().into_inner();
    assert_eq!(reply.version, 3);
    assert_eq!(client.deposit_funds(retried).await.unwrap().into_inner(), reply);
    let next = pb::WithdrawFundsRequest { expected_version: Some(3), ..withdraw("acc", 105) };
    assert_eq!(client.withdraw_funds(next).await.unwrap().into_inner().version, 4);
    assert_eq!(count_events(&nats.url(), "acc").await, 4);
}

#[tokio::test]
async fn a_write_service_killed_with_sigkill_decides_from_the_log_after_restart() {
    let nats = NatsServer::start().await;
    let mut service = ServiceProcess::spawn(&nats.url()).await;
    service.client.open_account(open("acc")).await.unwrap();
    let deposit_once = pb::DepositFundsRequest { command_id: "before-crash".into(), ..deposit("acc", 100) };
    let deposited = service.client.deposit_funds(deposit_once.clone()).await.unwrap().into_inner();
    service.client.withdraw_funds(withdraw("acc", 30)).await.unwrap();
    service.child.kill().await.unwrap();

    let mut service = ServiceProcess::spawn(&nats.url()).await;
    assert_status(service.client.withdraw_funds(withdraw("acc", 71)).await, Code::FailedPrecondition, "balance of 70");
    assert_status(service.client.open_account(open("acc")).await, Code::AlreadyExists, "already exists");
    assert_eq!(service.client.deposit_funds(deposit_once).await.unwrap().into_inner(), deposited);
    let next = pb::DepositFundsRequest { expected_version: Some(3), ..deposit("acc", 1) };
    assert_eq!(service.client.deposit_funds(next).await.unwrap().into_inner().version, 4);
}

#[tokio::test]
async fn sigterm_drains_in_flight_commands_so_no_ok_is_lost_and_no_error_landed() {
    let nats = NatsServer::start().await;
    let mut service = ServiceProcess::spawn(&nats.url()).await;
    service.client.open_account(open("acc")).await.unwrap();

    let calls: FuturesUnordered<_> = (0..60)
        .map(|i| {
            let mut client = service.client.clone();
            let request = pb::DepositFundsRequest { command_id: format!("burst-{i}"), ..deposit("acc", 1) };
            async move { client.deposit_funds(request).await.map(|reply| reply.into_inner()) }
        })
        .collect();
    let pid = service.child.id().expect("running").to_string();
    let burst = tokio::spawn(collect(calls));
    tokio::task::yield_now().await;
    let killed = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    let (ok, errors) = burst.await.unwrap();
    let exit = service.child.wait().await.unwrap();
    assert!(exit.success(), "write-service exited with {exit:?}");

    // Every OK is in the log, and nothing that failed is.
    assert_eq!(count_events(&nats.url(), "acc").await, 1 + ok.len(), "ok: {}, errors: {errors:?}", ok.len());
    let in_log: Vec<u64> = events(&nats.url()).await.iter().map(|m| m.sequence).collect();
    assert!(ok.iter().all(|reply| in_log.contains(&reply.position)));
}

#[tokio::test]
async fn without_a_collector_commands_succeed_and_sigterm_still_exits() {
    let nats = NatsServer::start().await;
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let env = [
        ("OTEL_SDK_DISABLED", "false"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", nowhere.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
    ];
    let mut service = ServiceProcess::spawn_with(&nats.url(), &env).await;
    for i in 0..20 {
        let reply = service.client.open_account(open(&format!("acc-{i}"))).await.unwrap().into_inner();
        assert_eq!(reply.version, 1);
    }
    let pid = service.child.id().expect("running").to_string();
    tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    let exit = tokio::time::timeout(std::time::Duration::from_secs(30), service.child.wait())
        .await
        .expect("flushing to an absent collector must not hang shutdown")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn a_broker_failure_reaches_the_client_as_fixed_words_not_the_servers_text() {
    // Given an account the service has cached...
    let nats = NatsServer::start().await;
    let app = TestApp::spawn(&nats.url()).await;
    app.client.clone().open_account(open("acc")).await.unwrap();
    // ...when the stream disappears under it (JetStream then answers a
    // publish with its own text: "no stream found for given subject").
    let jetstream = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    jetstream.delete_stream(STREAM).await.unwrap();
    let status = app.client.clone().deposit_funds(deposit("acc", 1)).await.unwrap_err();

    // Then the client reads UNAVAILABLE in this service's words.
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "the event log is unavailable (JetStream could not take the request, e.g. while it elects a stream leader); \
         retry, with the same command_id to make the retry safe"
    );
}

#[tokio::test]
async fn a_stream_that_does_not_match_the_settings_keeps_the_service_not_serving_and_says_why() {
    // Given the event log created with one replica...
    let nats = NatsServer::start().await;
    drop(TestApp::spawn(&nats.url()).await);

    // ...when a write-service that wants three starts on it.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_write-service"))
        .env("LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("NATS_URL", nats.url())
        .env("EVENT_STREAM", STREAM)
        .env("EVENT_SUBJECT_PREFIX", PREFIX)
        .env("EVENT_STREAM_REPLICAS", "3")
        .env("OTEL_SDK_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Then it says why it does not serve, in words an operator can act on.
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
    let said = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("is not what this write-service needs") {
                return line;
            }
        }
        String::new()
    })
    .await
    .expect("the service says why within 20 s");
    assert!(said.contains("it has 1 replica(s), EVENT_STREAM_REPLICAS is 3"), "{said}");
    assert!(said.contains("the service stays NOT_SERVING"), "{said}");
}
