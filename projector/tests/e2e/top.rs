//! `cqrs-top` as a person uses it: the local run (`scripts/run-local.sh`)
//! under loadgen, the view in a terminal (tmux), its screen read back.
//! The three panes show live numbers; a stopped projector turns its pane
//! into an alarm.

use std::{process::Stdio, time::Duration};

use testkit::{eventually, eventually_some, free_port};
use tokio::process::Command;

use crate::{run_local, telemetry::binary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_view_shows_the_three_sides_and_a_stopped_projector() {
    let data = tempfile::tempdir().unwrap();
    let [nats, write, read, projector] = std::array::from_fn(|_| free_port());
    let metrics = three_free_ports();
    let ports = [nats, write, read, projector].map(|port| port.to_string());
    // No collector: traces off, metrics served (what cqrs-top reads).
    let metrics_port = metrics.to_string();
    let env = [("METRICS_PORT", metrics_port.as_str()), ("OTEL_EXPORTER_OTLP_ENDPOINT", "")];
    let mut script = run_local::start(data.path(), &ports, &env).await;

    // The view, in a terminal 170 columns wide.
    let session = format!("cqrs-top-{}", std::process::id());
    let top = format!(
        "env COLUMNS=170 {} --write 127.0.0.1:{metrics} --read 127.0.0.1:{} --projector 127.0.0.1:{}",
        binary("cqrs-top").display(),
        metrics + 1,
        metrics + 2
    );
    tmux(&["new-session", "-d", "-s", &session, "-x", "170", "-y", "40", &top]).await;
    let _session = KillOnDrop(session.clone());

    // Load on both sides.
    let mut load = Command::new(binary("loadgen"))
        .args(["mixed", "--accounts", "20", "--duration", "60s", "--concurrency", "4"])
        .args(["--write-addr", &format!("http://127.0.0.1:{write}")])
        .args(["--read-addr", &format!("http://127.0.0.1:{read}")])
        .env("OTEL_SDK_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Live numbers in all three panes.
    let screen = eventually_some(Duration::from_secs(30), "the three panes to show live numbers", || async {
        let screen = capture(&session).await;
        let live = |row: &str| rate_on(&screen, row).is_some_and(|rate| rate > 0.0);
        (live("DepositFunds") && live("GetAccount") && live("account_summary")).then_some(screen)
    })
    .await;
    for title in ["WRITE side", "READ side", "PROJECTION side", "staleness", "pending events", "dead letters 0"] {
        assert!(screen.contains(title), "{title:?} missing from:\n{screen}");
    }

    // The projector stops: its pane says so, the others stay live.
    kill_listener(projector).await;
    let screen = eventually_some(Duration::from_secs(15), "the projection pane to turn into an alarm", || async {
        let screen = capture(&session).await;
        screen.contains("projection: UNREACHABLE for").then_some(screen)
    })
    .await;
    assert!(rate_on(&screen, "DepositFunds").is_some_and(|rate| rate > 0.0), "{screen}");
    assert!(!screen.contains("write: UNREACHABLE"), "{screen}");

    let _ = load.kill().await;
    let pid = script.id().unwrap().to_string();
    Command::new("kill").args(["-INT", &pid]).status().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), script.wait()).await;
}

/// The screen as the terminal shows it.
async fn capture(session: &str) -> String {
    let output = Command::new("tmux").args(["capture-pane", "-p", "-t", session]).output().await.unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn tmux(args: &[&str]) {
    let status = Command::new("tmux").args(args).status().await.expect("tmux is installed (scripts/setup.sh)");
    assert!(status.success(), "tmux {args:?}");
}

struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
    }
}

/// The first number after `row`'s name on the screen: its rate.
fn rate_on(screen: &str, row: &str) -> Option<f64> {
    let at = screen.find(row)?;
    screen[at + row.len()..].split_whitespace().next()?.parse().ok()
}

/// A port whose next two are free too (the local run serves the three
/// services' metrics on METRICS_PORT, +1, +2).
fn three_free_ports() -> u16 {
    loop {
        let port = free_port();
        let free = (0..3).all(|n| std::net::TcpListener::bind(("127.0.0.1", port + n)).is_ok());
        if free {
            return port;
        }
    }
}

/// Kills the process listening on 127.0.0.1:`port` (the local run's
/// projector), found by its `LISTEN_ADDR`.
async fn kill_listener(port: u16) {
    let wanted = format!("LISTEN_ADDR=127.0.0.1:{port}");
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == wanted.as_bytes()))
                && std::fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| exe.file_name().is_some_and(|name| name == "projector"))
        })
        .expect("the local run's projector");
    Command::new("kill").args(["-KILL", &pid.to_string()]).status().await.unwrap();
    let addr = format!("127.0.0.1:{port}");
    eventually(Duration::from_secs(10), "the projector to stop", || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(addr).await.is_err() }
    })
    .await;
}
