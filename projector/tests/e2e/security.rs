//! Security: the system runs with the least-privilege NATS users of
//! deploy/k8s/base/nats/auth.conf and each user can do nothing more than its
//! service needs; and no secret (NATS passwords, the read store's password,
//! the page-token key) appears in logs, spans or error messages, on the
//! happy path or when the secret is wrong; and with TLS configured, the
//! gRPC servers and NATS accept nothing else.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use shared::proto::bank::v1::{
    self as pb, account_command_service_client::AccountCommandServiceClient,
    account_query_service_client::AccountQueryServiceClient,
};
use testkit::{NatsServer, free_port, otlp::OtlpReceiver, tls::TestPki};
use tokio::process::{Child, Command};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    helpers::*,
    telemetry::{self, binary, service_command},
};

const WRITE_PASSWORD: &str = "wr1te-S3CRET-7f2a";
const PROJECTOR_PASSWORD: &str = "pr0j-S3CRET-91cc";
const STORE_PASSWORD: &str = "st0re-S3CRET-44d1";
const PAGE_KEY: &str = "pageKey-S3CRET-5be0";
const WRONG_PASSWORD: &str = "wr0ng-S3CRET-0000";
const ADMIN_PASSWORD: &str = "adm1n-S3CRET-3e8b";
const SECRETS: [&str; 6] =
    [WRITE_PASSWORD, PROJECTOR_PASSWORD, STORE_PASSWORD, PAGE_KEY, WRONG_PASSWORD, ADMIN_PASSWORD];

/// deploy/k8s/base/nats/auth.conf for this test's stream and subjects, with
/// the passwords it reads from the environment filled in.
fn auth_config() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/base/nats/auth.conf");
    std::fs::read_to_string(path)
        .unwrap()
        .replace("BANK_EVENTS", STREAM)
        .replace("bank.account.", &format!("{PREFIX}.account."))
        .replace("bank.trace.", &format!("{PREFIX}.trace."))
        .replace("$WRITE_SERVICE_NATS_PASSWORD", &format!("\"{WRITE_PASSWORD}\""))
        .replace("$PROJECTOR_NATS_PASSWORD", &format!("\"{PROJECTOR_PASSWORD}\""))
        .replace("$ADMIN_NATS_PASSWORD", &format!("\"{ADMIN_PASSWORD}\""))
}

/// A service binary with its stderr (the logs) captured.
fn spawn(name: &str, addr: SocketAddr, env: &[(&str, String)]) -> Child {
    service_command(name, addr, env).env("RUST_LOG", "info").stderr(Stdio::piped()).spawn().unwrap()
}

/// Stops `child` (SIGTERM, so it flushes its telemetry) and returns its logs.
async fn logs_of(child: Child) -> String {
    let pid = child.id().unwrap().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await;
    String::from_utf8_lossy(&output.expect("stops on SIGTERM").unwrap().stderr).into_owned()
}

/// A JetStream client of `user`, with short timeouts: a refused request
/// shows up as an error, not a hang.
async fn jetstream_as(nats: &NatsServer, user: &str, password: &str) -> async_nats::jetstream::Context {
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(nats.url())
        .await
        .unwrap();
    async_nats::jetstream::ContextBuilder::new().timeout(Duration::from_secs(1)).build(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_users_run_the_system_and_no_secret_leaks() {
    let nats = NatsServer::start_with_config(&auth_config()).await;
    let receiver = OtlpReceiver::start().await;
    let store = Store::postgres().await;
    // PostgreSQL here trusts local connections, so the password is not
    // checked, but it is in the URL every service is given.
    let store_url = store.url().replacen("postgres@", &format!("postgres:{STORE_PASSWORD}@"), 1);
    let common = |user: &str, password: &str| {
        vec![
            ("NATS_URL", nats.url()),
            ("NATS_USER", user.to_owned()),
            ("NATS_PASSWORD", password.to_owned()),
            ("READ_STORE_URL", store_url.clone()),
            ("PAGE_TOKEN_SECRET", PAGE_KEY.to_owned()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500".to_owned()),
        ]
    };
    let (write_addr, read_addr, projector_addr) = (
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        SocketAddr::from(([127, 0, 0, 1], free_port())),
    );
    // With the broker hop traced too: its reports need a permission.
    let mut write_env = common("write-service", WRITE_PASSWORD);
    write_env.push(("BROKER_TRACE_RATIO", "1".to_owned()));
    let write = spawn("write-service", write_addr, &write_env);
    wait_for_health(write_addr, ServingStatus::Serving).await;
    let projector = spawn("projector", projector_addr, &common("projector", PROJECTOR_PASSWORD));
    let read = spawn("read-service", read_addr, &common("", ""));
    wait_for_health(read_addr, ServingStatus::Serving).await;

    // The system works with these users: commands, projection, queries.
    let mut errors = Vec::new();
    let mut commands = AccountCommandServiceClient::new(channel(write_addr));
    let mut queries = AccountQueryServiceClient::new(channel(read_addr));
    for id in ["sec-1", "sec-2"] {
        let open = pb::OpenAccountRequest { account_id: id.into(), owner: "Owner".into(), command_id: String::new() };
        commands.open_account(open).await.unwrap();
    }
    let deposit = pb::DepositFundsRequest { account_id: "sec-1".into(), amount: 70, ..Default::default() };
    let last = commands.deposit_funds(deposit).await.unwrap().into_inner();
    let overdraw = pb::WithdrawFundsRequest { account_id: "sec-2".into(), amount: 5, ..Default::default() };
    errors.push(commands.withdraw_funds(overdraw).await.unwrap_err());
    let account = queries
        .get_account(pb::GetAccountRequest { account_id: "sec-1".into(), min_position: last.position })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.balance, 70);
    let page = queries
        .list_accounts(pb::ListAccountsRequest { page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let forged = pb::ListAccountsRequest {
        page_size: 1,
        page_token: format!("{}x", page.next_page_token),
        ..Default::default()
    };
    errors.push(queries.list_accounts(forged).await.unwrap_err());
    errors.push(
        queries.get_account(pb::GetAccountRequest { account_id: "no.such".into(), min_position: 0 }).await.unwrap_err(),
    );

    // ...and nothing more. The projector may not append an event, nor
    // delete the stream; the write-service may not delete the stream nor
    // read another service's durable consumer; a stranger cannot connect.
    let as_projector = jetstream_as(&nats, "projector", PROJECTOR_PASSWORD).await;
    let forged_event = as_projector.publish(format!("{PREFIX}.account.sec-1"), "forged".into()).await;
    let refused = match forged_event {
        Ok(ack) => ack.await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "the projector's user appended an event");
    assert!(as_projector.delete_stream(STREAM).await.is_err(), "the projector's user deleted the stream");
    let as_writer = jetstream_as(&nats, "write-service", WRITE_PASSWORD).await;
    assert!(as_writer.delete_stream(STREAM).await.is_err(), "the write-service's user deleted the stream");
    assert!(
        as_writer
            .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>("projector", STREAM)
            .await
            .is_err(),
        "the write-service's user read the projector's consumer"
    );
    let stranger =
        async_nats::ConnectOptions::with_user_and_password("someone".into(), "guess".into()).connect(nats.url()).await;
    assert!(stranger.is_err(), "an unknown user connected");
    let log_length = jetstream_as(&nats, "projector", PROJECTOR_PASSWORD)
        .await
        .get_stream(STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(log_length, 3, "only the two openings and the deposit are in the log");

    // A wrong password: the write-service stays NOT_SERVING and says why,
    // without printing the password it was given.
    let wrong_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let wrong = spawn("write-service", wrong_addr, &common("write-service", WRONG_PASSWORD));
    wait_for_health(wrong_addr, ServingStatus::NotServing).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let unavailable = AccountCommandServiceClient::new(channel(wrong_addr))
        .open_account(pb::OpenAccountRequest { account_id: "x".into(), owner: "X".into(), command_id: String::new() })
        .await
        .unwrap_err();
    assert_eq!(unavailable.code(), Code::Unavailable);
    errors.push(unavailable);
    // An unsupported read-store URL holding a password: refused by name,
    // without the URL.
    let bad_store = Command::new(binary("projector"))
        .env("READ_STORE_URL", format!("mysql://cqrs:{STORE_PASSWORD}@db/read_model"))
        .env("NATS_URL", nats.url())
        .env("NATS_USER", "projector")
        .env("NATS_PASSWORD", PROJECTOR_PASSWORD)
        .env("EVENT_STREAM", STREAM)
        .env("OTEL_SDK_DISABLED", "true")
        .arg("rebuild")
        .output()
        .await
        .unwrap();
    assert!(!bad_store.status.success());
    let bad_store_output = String::from_utf8_lossy(&bad_store.stderr).into_owned();
    assert!(bad_store_output.contains("mysql"), "{bad_store_output}");

    let mut everything = vec![bad_store_output];
    everything.push(logs_of(wrong).await);
    for child in [write, projector, read] {
        everything.push(logs_of(child).await);
    }
    assert!(everything.iter().any(|logs| logs.contains("NATS")), "the logs were captured: {everything:?}");
    everything.extend(errors.iter().map(|status| format!("{status:?}")));
    for span in receiver.spans() {
        everything.push(format!("{:?}", span.span));
        everything.push(format!("{:?}", span.resource));
    }
    assert!(receiver.spans().len() > 5, "spans were exported");
    let broker_spans = receiver.spans().iter().filter(|s| s.span.name.starts_with("nats.server ")).count();
    assert!(broker_spans >= 3, "the write-service user may have the broker trace its appends: {broker_spans} spans");
    for text in &everything {
        for secret in SECRETS {
            assert!(!text.contains(secret), "a secret leaked: {secret} in {text}");
        }
    }
}

/// Should a configuration ever be logged (`?config`), no secret is in it.
#[test]
fn configurations_never_print_their_secrets() {
    use clap::Parser;
    let nats = ["--nats-url", "nats://tok3n-S3CRET@nats:4222", "--nats-user", "w", "--nats-password", WRITE_PASSWORD];
    let store = format!("postgres://cqrs:{STORE_PASSWORD}@db/read_model");
    let write = write_service::config::Config::parse_from([&["write-service"][..], &nats].concat());
    let projector = projector::config::Cli::parse_from(
        [&["projector", "--read-store-url", &store, "--nats-token", PROJECTOR_PASSWORD][..], &nats].concat(),
    );
    let read = read_service::config::Config::parse_from([
        "read-service",
        "--read-store-url",
        &store,
        "--page-token-secret",
        PAGE_KEY,
    ]);
    for printed in [format!("{write:?}"), format!("{projector:?}"), format!("{read:?}")] {
        for secret in [WRITE_PASSWORD, PROJECTOR_PASSWORD, STORE_PASSWORD, PAGE_KEY, "tok3n-S3CRET"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("***"), "{printed}");
    }
}

/// A channel to `addr` over TLS, trusting the test CA, presenting the
/// client certificate when `client_cert`.
async fn tls_channel(pki: &TestPki, addr: SocketAddr, client_cert: bool) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(TestPki::pem(&pki.ca_cert())))
        .domain_name("localhost");
    if client_cert {
        let (cert, key) = pki.client();
        tls = tls.identity(Identity::from_pem(TestPki::pem(&cert), TestPki::pem(&key)));
    }
    Channel::from_shared(format!("https://localhost:{}", addr.port())).unwrap().tls_config(tls)?.connect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_nats_speak_tls_only() {
    let pki = TestPki::generate();
    let (server_cert, server_key) = pki.server();
    let (client_cert, client_key) = pki.client();
    // NATS with TLS required and client certificates verified (mutual TLS).
    let nats = NatsServer::start_with_config(&format!(
        "tls {{\n  cert_file: {server_cert:?}\n  key_file: {server_key:?}\n  ca_file: {:?}\n  verify: true\n}}\n",
        pki.ca_cert()
    ))
    .await;
    let path = |p: &std::path::Path| p.display().to_string();
    let nats_tls = vec![
        ("NATS_URL", format!("tls://127.0.0.1:{}", nats.port())),
        ("NATS_TLS_CA_FILE", path(&pki.ca_cert())),
        ("NATS_TLS_CERT_FILE", path(&client_cert)),
        ("NATS_TLS_KEY_FILE", path(&client_key)),
        ("OTEL_SDK_DISABLED", "true".to_owned()),
    ];
    let grpc_tls = [("GRPC_TLS_CERT_FILE", path(&server_cert)), ("GRPC_TLS_KEY_FILE", path(&server_key))];
    let store = Store::sqlite();
    let [write_addr, write_health, read_addr, read_health, projector_addr] =
        std::array::from_fn(|_| SocketAddr::from(([127, 0, 0, 1], free_port())));

    // The write-service requires client certificates too; the read-service
    // only serves TLS. Each answers plaintext health on its own port.
    let mut write_env = [&nats_tls[..], &grpc_tls[..]].concat();
    write_env.push(("GRPC_TLS_CLIENT_CA_FILE", path(&pki.ca_cert())));
    write_env.push(("HEALTH_LISTEN_ADDR", write_health.to_string()));
    let mut read_env = grpc_tls.to_vec();
    read_env.push(("READ_STORE_URL", store.url()));
    read_env.push(("HEALTH_LISTEN_ADDR", read_health.to_string()));
    read_env.push(("OTEL_SDK_DISABLED", "true".to_owned()));
    let mut projector_env = nats_tls.clone();
    projector_env.push(("READ_STORE_URL", store.url()));

    let _write = telemetry::spawn("write-service", write_addr, &write_env);
    let _projector = telemetry::spawn("projector", projector_addr, &projector_env);
    let _read = telemetry::spawn("read-service", read_addr, &read_env);
    // SERVING on the write side means its NATS connection (TLS, client
    // certificate) is up and the stream exists.
    wait_for_health(write_health, ServingStatus::Serving).await;
    wait_for_health(read_health, ServingStatus::Serving).await;

    let mut commands = AccountCommandServiceClient::new(tls_channel(&pki, write_addr, true).await.unwrap());
    let open = pb::OpenAccountRequest { account_id: "tls-1".into(), owner: "Owner".into(), command_id: String::new() };
    commands.open_account(open).await.unwrap();
    let deposit = pb::DepositFundsRequest { account_id: "tls-1".into(), amount: 42, ..Default::default() };
    let last = commands.deposit_funds(deposit).await.unwrap().into_inner();
    // The projector read the events over TLS too.
    let mut queries = AccountQueryServiceClient::new(tls_channel(&pki, read_addr, false).await.unwrap());
    let account = queries
        .get_account(pb::GetAccountRequest { account_id: "tls-1".into(), min_position: last.position })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.balance, 42);

    // Nothing gets through without TLS, nor without a client certificate
    // where one is required.
    let plaintext = AccountQueryServiceClient::new(channel(read_addr))
        .get_account(pb::GetAccountRequest { account_id: "tls-1".into(), min_position: 0 })
        .await;
    // (The client sees the TLS handshake bytes as a broken HTTP/2 stream.)
    assert!(plaintext.is_err(), "a plaintext call was answered: {plaintext:?}");
    let anonymous = match tls_channel(&pki, write_addr, false).await {
        Ok(channel) => AccountCommandServiceClient::new(channel)
            .deposit_funds(pb::DepositFundsRequest { account_id: "tls-1".into(), amount: 1, ..Default::default() })
            .await
            .is_err(),
        Err(_) => true,
    };
    assert!(anonymous, "a client without a certificate was served by the mutual-TLS write-service");
    // (A client that does not ask for TLS is upgraded by async-nats when the
    // server requires it, so the meaningful refusal is this one.)
    let without_certificate = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca_cert())
        .require_tls(true)
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url())
        .await;
    assert!(without_certificate.is_err(), "NATS accepted a client without a certificate");
    let balance = queries
        .get_account(pb::GetAccountRequest { account_id: "tls-1".into(), min_position: 0 })
        .await
        .unwrap()
        .into_inner()
        .balance;
    assert_eq!(balance, 42, "the refused deposit changed nothing");

    // loadgen speaks TLS (and presents its certificate) too.
    let load = Command::new(binary("loadgen"))
        .args(["mixed", "--json", "--read-your-writes", "--accounts", "5", "--duration", "1s", "--concurrency", "2"])
        .args(["--write-addr", &format!("https://localhost:{}", write_addr.port())])
        .args(["--read-addr", &format!("https://localhost:{}", read_addr.port())])
        .args(["--tls-ca-file", &path(&pki.ca_cert())])
        .args(["--tls-cert-file", &path(&client_cert), "--tls-key-file", &path(&client_key)])
        .env("OTEL_SDK_DISABLED", "true")
        .output()
        .await
        .unwrap();
    assert!(load.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
    let report: serde_json::Value = serde_json::from_slice(&load.stdout).unwrap();
    let operations = report["operations"].as_array().unwrap();
    assert!(operations.iter().any(|operation| operation["count"].as_u64() > Some(0)), "{report}");
    for operation in operations {
        assert_eq!(operation["errors"], serde_json::json!({}), "{operation}");
    }
}

/// cert-manager renews a certificate by rewriting the mounted Secret's
/// files in place (an atomic swap of the folder they live in); a running
/// server serves the new certificate, and trusts the new client CA, from the
/// next handshake on, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_under_running_servers_are_served_on_the_next_handshake() {
    let (old, new) = (TestPki::generate(), TestPki::generate());
    let mounted = tempfile::tempdir().unwrap();
    let install = |pki: &TestPki| {
        let (cert, key) = pki.server();
        for (from, to) in [(cert, "tls.crt"), (key, "tls.key"), (pki.ca_cert(), "ca.crt")] {
            let staged = mounted.path().join(format!(".{to}.new"));
            std::fs::copy(from, &staged).unwrap();
            std::fs::rename(staged, mounted.path().join(to)).unwrap();
        }
    };
    install(&old);
    let file = |name: &str| mounted.path().join(name).display().to_string();
    let nats = NatsServer::start().await;
    let store = Store::sqlite();
    let [write_addr, write_health, read_addr, read_health, projector_addr] =
        std::array::from_fn(|_| SocketAddr::from(([127, 0, 0, 1], free_port())));
    let tls = [("GRPC_TLS_CERT_FILE", file("tls.crt")), ("GRPC_TLS_KEY_FILE", file("tls.key"))];
    let common = [("OTEL_SDK_DISABLED", "true".to_owned()), ("NATS_URL", nats.url())];
    let mut write_env = [&tls[..], &common[..]].concat();
    write_env.push(("GRPC_TLS_CLIENT_CA_FILE", file("ca.crt")));
    write_env.push(("HEALTH_LISTEN_ADDR", write_health.to_string()));
    let mut read_env = [&tls[..], &common[..]].concat();
    read_env.push(("READ_STORE_URL", store.url()));
    read_env.push(("HEALTH_LISTEN_ADDR", read_health.to_string()));
    let mut write = telemetry::spawn("write-service", write_addr, &write_env);
    let _projector =
        telemetry::spawn("projector", projector_addr, &[&common[..], &[("READ_STORE_URL", store.url())]].concat());
    let mut read = telemetry::spawn("read-service", read_addr, &read_env);
    wait_for_health(write_health, ServingStatus::Serving).await;
    wait_for_health(read_health, ServingStatus::Serving).await;

    let open =
        |id: &str| pb::OpenAccountRequest { account_id: id.into(), owner: "Owner".into(), command_id: String::new() };
    let get = |id: &str, min_position| pb::GetAccountRequest { account_id: id.into(), min_position };
    let mut old_commands = AccountCommandServiceClient::new(tls_channel(&old, write_addr, true).await.unwrap());
    let mut old_queries = AccountQueryServiceClient::new(tls_channel(&old, read_addr, false).await.unwrap());
    let first = old_commands.open_account(open("rot-1")).await.unwrap().into_inner();
    old_queries.get_account(get("rot-1", first.position)).await.unwrap();
    assert!(tls_channel(&new, read_addr, false).await.is_err(), "the new CA is trusted before the rotation");

    // The rotation: new server certificates from a new CA, which is also the
    // write-service's new client CA. Then a renewal caught half-written.
    install(&new);
    let mut new_commands = AccountCommandServiceClient::new(tls_channel(&new, write_addr, true).await.unwrap());
    let mut new_queries = AccountQueryServiceClient::new(tls_channel(&new, read_addr, false).await.unwrap());
    let second = new_commands.open_account(open("rot-2")).await.unwrap().into_inner();
    let account = new_queries.get_account(get("rot-2", second.position)).await.unwrap().into_inner();
    assert_eq!(account.account_id, "rot-2");
    for addr in [write_addr, read_addr] {
        assert!(tls_channel(&old, addr, false).await.is_err(), "{addr} still presents the old certificate");
    }
    // Connections made before the rotation go on until they end.
    old_queries.get_account(get("rot-2", second.position)).await.unwrap();
    std::fs::write(mounted.path().join("tls.crt"), "-----BEGIN CERTIFICATE-----\ntruncat").unwrap();
    let mut after_broken = AccountQueryServiceClient::new(tls_channel(&new, read_addr, false).await.unwrap());
    after_broken.get_account(get("rot-2", 0)).await.unwrap();

    for (name, child) in [("write-service", &mut write), ("read-service", &mut read)] {
        assert!(child.try_wait().unwrap().is_none(), "{name} restarted or stopped");
    }
}

/// A certificate that cannot be read, or is not one, stops the service at
/// start, saying which file and why, instead of serving plaintext.
#[tokio::test]
async fn an_unusable_certificate_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let garbage = garbage.display().to_string();
    let missing = "/nonexistent/tls.crt".to_owned();
    for name in ["write-service", "read-service"] {
        for (cert, expected) in [(&missing, missing.as_str()), (&garbage, "invalid gRPC TLS configuration: ")] {
            let start = Command::new(binary(name))
                .env("LISTEN_ADDR", "127.0.0.1:0")
                .env("GRPC_TLS_CERT_FILE", cert)
                .env("GRPC_TLS_KEY_FILE", cert)
                .env("OTEL_SDK_DISABLED", "true")
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(Duration::from_secs(20), start)
                .await
                .unwrap_or_else(|_| panic!("{name} kept running with {cert}"))
                .unwrap();
            assert!(!output.status.success(), "{name} started with {cert}");
            let logs = String::from_utf8_lossy(&output.stderr);
            assert!(logs.contains(expected), "{name} did not say why: {logs}");
            // The reason, not only tonic's "transport error".
            assert!(!logs.trim_end().ends_with("transport error"), "{logs}");
        }
    }
}
