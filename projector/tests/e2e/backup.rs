//! Backing the event log up and restoring it after the stream is lost: the
//! system carries on with the same positions and the same read model
//! (deploy/README.md, "Backing up and restoring the event log").

use std::process::Output;

use shared::proto::bank::v1::{
    self as pb, account_command_service_client::AccountCommandServiceClient,
    account_query_service_client::AccountQueryServiceClient,
};
use testkit::NatsServer;
use tonic::transport::Channel;

use crate::{
    helpers::{
        InProcess, PREFIX, ProjectorProcess, STREAM, Store, channel, facts, spawn_read_service, spawn_write_service,
    },
    telemetry::binary,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_event_log_carries_on_with_the_same_positions_and_read_model() {
    let (nats, store) = (NatsServer::start().await, Store::sqlite());
    let system = System::start(&nats, &store).await;
    let (mut commands, queries) = (system.commands.clone(), system.queries.clone());

    // Some history, ending with a command the client will retry later.
    let ids: Vec<String> = (0..6).map(|i| format!("acc-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let open =
            pb::OpenAccountRequest { account_id: id.clone(), owner: format!("Owner {i}"), command_id: String::new() };
        commands.open_account(open).await.unwrap();
        for amount in [100, 250, 7] {
            commands.deposit_funds(deposit(id, amount * (i as i64 + 1), "")).await.unwrap();
        }
    }
    let last = commands.deposit_funds(deposit("acc-0", 1, "the-retried-command")).await.unwrap().into_inner();
    let read_model = read_side(&queries, &ids, last.position).await;
    let log = messages(&nats, last.position).await;

    // Backed up while the system runs (twice: --keep 1 leaves the newest).
    let backups = tempfile::tempdir().unwrap();
    let to_dir = backups.path().to_str().unwrap();
    success(write_service(&nats, &["backup", "--to-dir", to_dir, "--keep", "1"]).await);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let report = success(write_service(&nats, &["backup", "--to-dir", to_dir, "--keep", "1"]).await);
    assert!(report.contains(&format!("{} events, positions 1..={}", last.position, last.position)), "{report}");
    let kept: Vec<_> = std::fs::read_dir(backups.path()).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(kept.len(), 1, "--keep 1 keeps one backup: {kept:?}");
    let backup = kept[0].to_str().unwrap();

    // A restore never overwrites a live log.
    let refused = write_service(&nats, &["restore", "--from", backup]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains(&format!("the stream {STREAM} exists")), "{stderr}");

    // The disaster: the write side and the projector stop, the stream is gone.
    let _read = system.lose_the_stream(&nats).await;

    let report = success(write_service(&nats, &["restore", "--latest-in", to_dir]).await);
    assert!(report.contains(&format!("positions 1..={}", last.position)), "{report}");
    assert!(messages(&nats, last.position).await == log, "the restored log differs from the backed-up one");

    // The system carries on where it was.
    let write = spawn_write_service(&nats.url()).await;
    let _projector = ProjectorProcess::spawn(&nats.url(), &store.url(), &[]).await;
    let mut commands = AccountCommandServiceClient::new(channel(write.addr));
    let retried = commands.deposit_funds(deposit("acc-0", 1, "the-retried-command")).await.unwrap().into_inner();
    assert_eq!(retried, last, "a retry after the restore gets the original result, not a second event");
    let next = commands.deposit_funds(deposit("acc-5", 5, "")).await.unwrap().into_inner();
    assert_eq!(next.position, last.position + 1, "the log continues at the next position");
    assert_eq!(read_side(&queries, &ids[..5], next.position).await, read_model[..5], "the read model is unchanged");
    let account = queries
        .clone()
        .get_account(pb::GetAccountRequest { account_id: "acc-5".into(), min_position: next.position })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.balance, (100 + 250 + 7) * 6 + 5, "the new event is projected on top of the restored ones");
    assert_eq!(account.position, next.position);
}

/// The system on a NATS server and a read store.
struct System {
    write: InProcess,
    projector: ProjectorProcess,
    _read: InProcess,
    commands: AccountCommandServiceClient<Channel>,
    queries: AccountQueryServiceClient<Channel>,
}

impl System {
    async fn start(nats: &NatsServer, store: &Store) -> Self {
        let write = spawn_write_service(&nats.url()).await;
        let projector = ProjectorProcess::spawn(&nats.url(), &store.url(), &[]).await;
        let read = spawn_read_service(&store.url(), &[]).await;
        let commands = AccountCommandServiceClient::new(channel(write.addr));
        let queries = AccountQueryServiceClient::new(channel(read.addr));
        Self { write, projector, _read: read, commands, queries }
    }

    /// The disaster: the write side and the projector stop, the stream is
    /// deleted. The read side stays up (returned, to keep it running).
    async fn lose_the_stream(self, nats: &NatsServer) -> InProcess {
        let Self { write, mut projector, _read: read, .. } = self;
        drop(write);
        projector.kill().await;
        let jetstream = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        jetstream.delete_stream(STREAM).await.unwrap();
        assert!(jetstream.get_stream(STREAM).await.is_err());
        read
    }
}

fn deposit(id: &str, amount: i64, command_id: &str) -> pb::DepositFundsRequest {
    pb::DepositFundsRequest { account_id: id.into(), amount, command_id: command_id.into(), expected_version: None }
}

/// What the read side answers about `ids` once `min_position` is applied:
/// each account and its whole history.
async fn read_side(
    queries: &AccountQueryServiceClient<Channel>,
    ids: &[String],
    min_position: u64,
) -> Vec<(pb::Account, Vec<pb::HistoryEntry>)> {
    let mut answers = Vec::new();
    for id in ids {
        let mut queries = queries.clone();
        let account = queries
            .get_account(pb::GetAccountRequest { account_id: id.clone(), min_position })
            .await
            .unwrap()
            .into_inner();
        let request = pb::GetAccountHistoryRequest {
            account_id: id.clone(),
            page_size: 100,
            page_token: String::new(),
            min_position,
        };
        let history = queries.get_account_history(request).await.unwrap().into_inner();
        assert!(history.next_page_token.is_empty());
        answers.push(facts(account, history.entries));
    }
    answers
}

/// A message of the log as it is stored: position, subject, headers,
/// payload and time.
type Stored = (u64, String, async_nats::HeaderMap, bytes::Bytes, time::OffsetDateTime);

/// Every message of the log, which must end at `last`.
async fn messages(nats: &NatsServer, last: u64) -> Vec<Stored> {
    let jetstream = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = jetstream.get_stream(STREAM).await.unwrap();
    assert_eq!(stream.cached_info().state.last_sequence, last);
    let mut messages = Vec::new();
    for position in 1..=last {
        let message = stream.get_raw_message(position).await.unwrap();
        messages.push((message.sequence, message.subject.to_string(), message.headers, message.payload, message.time));
    }
    messages
}

async fn write_service(nats: &NatsServer, args: &[&str]) -> Output {
    tokio::process::Command::new(binary("write-service"))
        .args(args)
        .env("NATS_URL", nats.url())
        .env("EVENT_STREAM", STREAM)
        .env("EVENT_SUBJECT_PREFIX", PREFIX)
        .env("OTEL_SDK_DISABLED", "true")
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap()
}

/// The command's standard output; fails the test with its error otherwise.
fn success(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "write-service failed: {stderr}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Restoring a backup older than the read model: the read store holds
/// events the log lost, and once the write side is back, the log holds other
/// events at their positions. The projector refuses to project on (it would
/// skip them as applied) until `projector rebuild` has projected the log
/// again; then the read model is the restored log's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_ahead_of_a_restored_log_is_refused_until_rebuilt() {
    let (nats, store) = (NatsServer::start().await, Store::sqlite());
    let system = System::start(&nats, &store).await;
    let (mut commands, queries) = (system.commands.clone(), system.queries.clone());
    let open =
        |id: &str| pb::OpenAccountRequest { account_id: id.into(), owner: "Owner".into(), command_id: String::new() };
    commands.open_account(open("kept")).await.unwrap();
    let backups = tempfile::tempdir().unwrap();
    let to_dir = backups.path().to_str().unwrap();
    success(write_service(&nats, &["backup", "--to-dir", to_dir]).await);
    // After the backup: lost with the stream.
    commands.open_account(open("lost")).await.unwrap();
    let mut last = 0;
    for _ in 0..3 {
        last = commands.deposit_funds(deposit("lost", 10, "")).await.unwrap().into_inner().position;
    }
    read_side(&queries, &["lost".to_owned()], last).await;

    let _read = system.lose_the_stream(&nats).await;
    success(write_service(&nats, &["restore", "--latest-in", to_dir]).await);
    // The write side comes back first and writes past the read model's
    // checkpoint: other events at the positions it applied.
    let write = spawn_write_service(&nats.url()).await;
    let mut commands = AccountCommandServiceClient::new(channel(write.addr));
    let mut after = 0;
    for _ in 0..last + 1 {
        after = commands.deposit_funds(deposit("kept", 1, "")).await.unwrap().into_inner().position;
    }
    assert!(after > last);

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    let mut refused = crate::helpers::projector_command(&nats.url(), &store.url())
        .env("LISTEN_ADDR", addr.to_string())
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(refused.stderr.take().unwrap());
    let said = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut line = String::new();
        while tokio::io::AsyncBufReadExt::read_line(&mut stderr, &mut line).await.unwrap() > 0 {
            if line.contains("the read model does not match the event log") {
                return line;
            }
            line.clear();
        }
        panic!("the projector stopped without saying why");
    })
    .await
    .expect("the projector refuses a read model ahead of the restored log");
    assert!(said.contains("projector rebuild"), "{said}");
    let lost = queries.clone().get_account(pb::GetAccountRequest { account_id: "kept".into(), min_position: 0 }).await;
    assert_eq!(lost.unwrap().into_inner().balance, 0, "nothing was projected on top of the stale read model");

    let rebuilt = crate::helpers::projector_command(&nats.url(), &store.url()).arg("rebuild").output().await.unwrap();
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    // The refusing projector (still retrying) now projects on.
    crate::helpers::wait_for_health(addr, tonic_health::pb::health_check_response::ServingStatus::Serving).await;
    let kept = read_side(&queries, &["kept".to_owned()], after).await;
    assert_eq!(kept[0].0.balance, i64::try_from(last + 1).unwrap());
    let gone =
        queries.clone().get_account(pb::GetAccountRequest { account_id: "lost".into(), min_position: after }).await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound, "the read model is the restored log's");
    drop(refused);
}
