//! loadgen against a private stack: its report counts every request it
//! sent, and its error counts match the failures a run provokes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use serde_json::Value;
use testkit::{NatsServer, eventually};

const STREAM: &str = "LOADGEN_EVENTS";

async fn stack(nats: &NatsServer, store_url: &str) -> (SocketAddr, SocketAddr) {
    opentelemetry::global::set_tracer_provider(opentelemetry_sdk::trace::SdkTracerProvider::builder().build());
    let common = ["--nats-url", &nats.url(), "--event-stream", STREAM];
    let write = write_service::config::Config::parse_from(
        [&["write-service", "--listen-addr", "127.0.0.1:0"], &common[..]].concat(),
    );
    let write = write_service::startup::Application::build(write).await.unwrap();
    let write_addr = write.local_addr();
    tokio::spawn(write.run_until_stopped(std::future::pending()));

    let projector = projector::config::Cli::parse_from(
        [&["projector", "--listen-addr", "127.0.0.1:0", "--read-store-url", store_url], &common[..]].concat(),
    )
    .config;
    let projector = projector::startup::Application::build(projector).await.unwrap();
    tokio::spawn(projector.run_until_stopped(std::future::pending()));

    let read = read_service::config::Config::parse_from([
        "read-service",
        "--listen-addr",
        "127.0.0.1:0",
        "--read-store-url",
        store_url,
    ]);
    let read = read_service::startup::Application::build(read).await.unwrap();
    let read_addr = read.local_addr();
    tokio::spawn(read.run_until_stopped(std::future::pending()));
    (write_addr, read_addr)
}

async fn loadgen(write: SocketAddr, read: SocketAddr, args: &[&str]) -> Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .args(["--json", "--write-addr", &format!("http://{write}"), "--read-addr", &format!("http://{read}")])
        .env("OTEL_SDK_DISABLED", "true")
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn operations(report: &Value) -> Vec<(String, u64, u64)> {
    report["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| {
            let errors: u64 = op["errors"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
            (op["operation"].as_str().unwrap().to_owned(), op["count"].as_u64().unwrap(), errors)
        })
        .collect()
}

async fn events_in_log(nats: &NatsServer) -> u64 {
    let jetstream = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    jetstream.get_stream(STREAM).await.unwrap().info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_every_request_and_every_failure() {
    let nats = NatsServer::start().await;
    let store = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}/read-model.db", store.path().display());
    let (write, read) = stack(&nats, &store_url).await;
    tonic_health_ready(write).await;

    // Accounts that were never opened: every command fails NOT_FOUND.
    let report =
        loadgen(write, read, &["write", "--no-setup", "--accounts", "5", "--duration", "1s", "--concurrency", "2"])
            .await;
    let ops = operations(&report);
    assert!(!ops.is_empty());
    for (name, count, errors) in &ops {
        assert!(*count > 0, "{name}");
        assert_eq!(errors, count, "{name}: every one of them failed");
        let not_found = report["operations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["operation"] == name.as_str())
            .unwrap()["errors"]["NOT_FOUND"]
            .as_u64();
        assert_eq!(not_found, Some(*count));
    }
    assert_eq!(events_in_log(&nats).await, 0);

    // A mixed run with read-your-writes: no errors, and every command it
    // counted as done is one event in the log.
    let report = loadgen(
        write,
        read,
        &["mixed", "--accounts", "20", "--duration", "2s", "--concurrency", "4", "--read-your-writes"],
    )
    .await;
    let ops = operations(&report);
    assert!(ops.iter().all(|(_, _, errors)| *errors == 0), "{ops:?}");
    let count = |name: &str| ops.iter().find(|(n, ..)| n == name).map_or(0, |(_, count, _)| *count);
    assert_eq!(count("OpenAccount"), 20);
    assert!(count("GetAccount") > 0 && count("DepositFunds") > 0);
    // Each opened account got one funding deposit during setup.
    let expected = 2 * count("OpenAccount") + count("DepositFunds") + count("WithdrawFunds");
    eventually(Duration::from_secs(5), "the log to hold every event", || async {
        events_in_log(&nats).await == expected
    })
    .await;
}

async fn tonic_health_ready(addr: SocketAddr) {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    eventually(Duration::from_secs(15), "write-service SERVING", || {
        let mut health = HealthClient::new(channel.clone());
        async move {
            health
                .check(HealthCheckRequest { service: String::new() })
                .await
                .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
        }
    })
    .await;
}
