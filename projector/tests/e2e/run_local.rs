//! The README's run command brings the whole system up, answers, and stops
//! everything on Ctrl-C.

use std::{process::Stdio, time::Duration};

use testkit::{eventually, free_port};
use tokio::io::{AsyncBufReadExt, BufReader};

async fn grpcurl(args: &[&str]) -> String {
    let output = tokio::process::Command::new("grpcurl").args(args).output().await.expect("grpcurl is installed");
    assert!(output.status.success(), "grpcurl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_local_brings_up_the_system_and_ctrl_c_stops_it() {
    let data = tempfile::tempdir().unwrap();
    let ports: Vec<String> = (0..4).map(|_| free_port().to_string()).collect();
    let mut script = start(data.path(), &ports, &[("OTEL_SDK_DISABLED", "true")]).await;

    let write = format!("127.0.0.1:{}", ports[1]);
    let read = format!("127.0.0.1:{}", ports[2]);
    // The write side serves once NATS and the stream are up.
    let logs = data.path().join("logs");
    let serving = tokio::time::timeout(
        Duration::from_secs(60),
        eventually(Duration::from_secs(120), "SERVING", || {
            let write = write.clone();
            async move {
                let output = tokio::process::Command::new("grpcurl")
                    .args(["-plaintext", "-d", r#"{"service":""}"#, &write, "grpc.health.v1.Health/Check"])
                    .output()
                    .await
                    .unwrap();
                String::from_utf8_lossy(&output.stdout).contains("SERVING")
                    && !String::from_utf8_lossy(&output.stdout).contains("NOT_SERVING")
            }
        }),
    )
    .await;
    assert!(serving.is_ok(), "write-service did not become SERVING; logs:\n{}", read_logs(&logs));
    let opened = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"account_id":"local-1","owner":"Ada"}"#,
        &write,
        "bank.v1.AccountCommandService/OpenAccount",
    ])
    .await;
    assert!(opened.contains(r#""version": "1""#), "{opened}");
    let account = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"account_id":"local-1","min_position":1}"#,
        &read,
        "bank.v1.AccountQueryService/GetAccount",
    ])
    .await;
    assert!(account.contains(r#""owner": "Ada""#), "{account}");
    assert!(data.path().join("read-model.db").exists());

    // Ctrl-C (SIGINT to the script) stops every process it started.
    let pid = script.id().unwrap().to_string();
    tokio::process::Command::new("kill").args(["-INT", &pid]).status().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), script.wait()).await.expect("the script stops").unwrap();
    assert!(status.code().is_some(), "{status:?}");
    for port in &ports {
        let addr = format!("127.0.0.1:{port}");
        eventually(Duration::from_secs(10), &format!("{addr} to close"), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_err() }
        })
        .await;
    }
}

/// `scripts/run-local.sh` on `ports` (NATS, write, read, projector) with
/// its data in `data` and `env` on top, once it says the system is up; its
/// output is drained from then on. Ctrl-C (SIGINT to its process group)
/// stops it.
pub(crate) async fn start(data: &std::path::Path, ports: &[String], env: &[(&str, &str)]) -> tokio::process::Child {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut script = tokio::process::Command::new("bash")
        .arg(format!("{root}/scripts/run-local.sh"))
        .env("DATA_DIR", data)
        .env("NATS_PORT", &ports[0])
        .env("WRITE_PORT", &ports[1])
        .env("READ_PORT", &ports[2])
        .env("PROJECTOR_PORT", &ports[3])
        .env("PROFILE", "debug")
        .env("SKIP_SETUP", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();
    let up = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("The system is up") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(up, Ok(true), "run-local.sh did not come up");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    script
}

/// Every log file the script wrote, for a failure message.
fn read_logs(folder: &std::path::Path) -> String {
    let mut logs = String::new();
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        logs.push_str(&format!("--- {}\n{text}\n", entry.path().display()));
    }
    logs
}
