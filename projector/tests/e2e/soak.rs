//! A soak: a steady mixed load (loadgen's binary, open loop, read-your-
//! writes) against the three service binaries, with each service's resident
//! memory sampled every second. In the suite it runs for SOAK_SECONDS
//! (default 9) and mostly shows the machinery works; the meaningful run is
//! minutes long:
//!
//! ```sh
//! SOAK_SECONDS=600 cargo test -p projector --test e2e soak -- --nocapture
//! ```

use std::{net::SocketAddr, time::Duration};

use testkit::{NatsServer, free_port};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    helpers::*,
    telemetry::{binary, spawn, stop},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_mixed_load_runs_without_errors_or_memory_growth() {
    let seconds: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(9);
    let nats = NatsServer::start().await;
    let store = Store::sqlite();
    let env = vec![("NATS_URL", nats.url()), ("READ_STORE_URL", store.url()), ("OTEL_SDK_DISABLED", "true".to_owned())];
    let addr = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (write_addr, read_addr, projector_addr) = (addr(), addr(), addr());
    let services = [
        ("write-service", spawn("write-service", write_addr, &env)),
        ("projector", spawn("projector", projector_addr, &env)),
        ("read-service", spawn("read-service", read_addr, &env)),
    ];
    wait_for_health(write_addr, ServingStatus::Serving).await;
    wait_for_health(read_addr, ServingStatus::Serving).await;

    let load = tokio::process::Command::new(binary("loadgen"))
        .args(["mixed", "--json", "--read-your-writes", "--accounts", "200", "--rate", "300", "--concurrency", "64"])
        .args(["--duration", &format!("{seconds}s")])
        .args(["--write-addr", &format!("http://{write_addr}"), "--read-addr", &format!("http://{read_addr}")])
        .env("OTEL_SDK_DISABLED", "true")
        .stderr(std::process::Stdio::null())
        .output();
    let sampler = async {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); services.len()];
        // Setup (opening the accounts) comes first; sample through the run.
        for _ in 0..seconds + 2 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (i, (_, child)) in services.iter().enumerate() {
                samples[i].push(rss_mib(child.id().unwrap()));
            }
        }
        samples
    };
    let (output, samples) = tokio::join!(load, sampler);
    let output = output.unwrap();
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for operation in report["operations"].as_array().unwrap() {
        assert_eq!(operation["errors"], serde_json::json!({}), "{operation}");
    }
    assert_eq!(report["dropped"], 0, "the open loop kept its rate");

    // Flat: the last third of the run uses no more than the middle third,
    // give or take allocator noise.
    for ((name, _), samples) in services.iter().zip(&samples) {
        let third = samples.len() / 3;
        let max = |s: &[f64]| s.iter().copied().fold(0.0, f64::max);
        let (middle, last) = (max(&samples[third..2 * third]), max(&samples[2 * third..]));
        println!("{name}: RSS MiB {samples:.1?}");
        assert!(last <= middle * 1.25 + 8.0, "{name} grew from {middle:.1} to {last:.1} MiB: {samples:.1?}");
    }
    for (_, child) in services {
        stop(child).await;
    }
}
