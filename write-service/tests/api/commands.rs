//! Every business rule and bad input, through a gRPC client.

use shared::proto::bank::v1 as pb;
use testkit::NatsServer;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn an_account_lives_by_the_rules() {
    let nats = NatsServer::start().await;
    let app = TestApp::spawn(&nats.url()).await;
    let mut client = app.client.clone();

    let opened = client.open_account(open("acc-1")).await.unwrap().into_inner();
    assert_eq!((opened.account_id.as_str(), opened.version), ("acc-1", 1));
    assert!(opened.position > 0);
    assert_status(client.open_account(open("acc-1")).await, Code::AlreadyExists, "acc-1 already exists");

    let deposited = client.deposit_funds(deposit("acc-1", 100)).await.unwrap().into_inner();
    assert_eq!(deposited.version, 2);
    assert!(deposited.position > opened.position);
    assert_eq!(client.withdraw_funds(withdraw("acc-1", 30)).await.unwrap().into_inner().version, 3);

    assert_status(
        client.withdraw_funds(withdraw("acc-1", 71)).await,
        Code::FailedPrecondition,
        "balance of 70, less than the 71 requested",
    );
    assert_status(client.close_account(close("acc-1")).await, Code::FailedPrecondition, "still has a balance of 70");

    assert_eq!(client.withdraw_funds(withdraw("acc-1", 70)).await.unwrap().into_inner().version, 4);
    assert_eq!(client.close_account(close("acc-1")).await.unwrap().into_inner().version, 5);
    assert_status(client.deposit_funds(deposit("acc-1", 1)).await, Code::FailedPrecondition, "is closed");
    assert_status(client.close_account(close("acc-1")).await, Code::FailedPrecondition, "is closed");
    assert_status(client.open_account(open("acc-1")).await, Code::AlreadyExists, "already exists");

    assert_status(client.deposit_funds(deposit("nobody", 1)).await, Code::NotFound, "nobody does not exist");
    assert_status(client.withdraw_funds(withdraw("nobody", 1)).await, Code::NotFound, "does not exist");
    assert_status(client.close_account(close("nobody")).await, Code::NotFound, "does not exist");

    client.open_account(open("rich")).await.unwrap();
    client.deposit_funds(deposit("rich", i64::MAX)).await.unwrap();
    assert_status(client.deposit_funds(deposit("rich", 1)).await, Code::FailedPrecondition, "largest balance");

    // Only accepted commands are in the log: 5 + 2 events.
    assert_eq!(events(&nats.url()).await.len(), 7);
}

#[tokio::test]
async fn bad_input_is_refused_by_field_and_never_reaches_nats() {
    let nats = NatsServer::start().await;
    let app = TestApp::spawn(&nats.url()).await;
    let mut client = app.client.clone();
    client.open_account(open("ok")).await.unwrap();

    for account_id in ["", "a.b", "a*", ">", "a b", "acc.*.>", "a\u{0}", "é", &"x".repeat(65)] {
        assert_status(client.open_account(open(account_id)).await, Code::InvalidArgument, "account_id");
        assert_status(client.deposit_funds(deposit(account_id, 1)).await, Code::InvalidArgument, "account_id");
        assert_status(client.withdraw_funds(withdraw(account_id, 1)).await, Code::InvalidArgument, "account_id");
        assert_status(client.close_account(close(account_id)).await, Code::InvalidArgument, "account_id");
    }
    for owner in ["", "   ", "Ada\u{7}", "Ada\nLovelace", &"o".repeat(201)] {
        let request = pb::OpenAccountRequest { owner: owner.into(), ..open("new") };
        assert_status(client.open_account(request).await, Code::InvalidArgument, "owner");
    }
    for amount in [0, -1, i64::MIN] {
        assert_status(client.deposit_funds(deposit("ok", amount)).await, Code::InvalidArgument, "amount");
        assert_status(client.withdraw_funds(withdraw("ok", amount)).await, Code::InvalidArgument, "amount");
    }
    for command_id in ["has space", "tab\t", &"k".repeat(129)] {
        let request = pb::DepositFundsRequest { command_id: command_id.into(), ..deposit("ok", 1) };
        assert_status(client.deposit_funds(request).await, Code::InvalidArgument, "command_id");
    }
    // The longest valid values pass.
    let long_id = "L".repeat(64);
    let request = pb::OpenAccountRequest { owner: "é".repeat(200), command_id: "k".repeat(128), ..open(&long_id) };
    assert_eq!(client.open_account(request).await.unwrap().into_inner().version, 1);

    // A request larger than the configured maximum is refused before work.
    let huge = pb::OpenAccountRequest { owner: "o".repeat(100 * 1024), ..open("huge") };
    assert_status(client.open_account(huge).await, Code::OutOfRange, "too large");

    let subjects: Vec<String> = events(&nats.url()).await.iter().map(|m| m.subject.to_string()).collect();
    assert_eq!(subjects, ["test.account.ok".to_owned(), format!("test.account.{long_id}")]);
}

#[tokio::test]
async fn a_stale_expected_version_is_aborted() {
    let nats = NatsServer::start().await;
    let app = TestApp::spawn(&nats.url()).await;
    let mut client = app.client.clone();
    client.open_account(open("acc")).await.unwrap();
    client.deposit_funds(deposit("acc", 10)).await.unwrap();

    let stale = pb::WithdrawFundsRequest { expected_version: Some(1), ..withdraw("acc", 5) };
    assert_status(client.withdraw_funds(stale).await, Code::Aborted, "version 2, not at the expected version 1");
    let ahead = pb::CloseAccountRequest { expected_version: Some(3), ..close("acc") };
    assert_status(client.close_account(ahead).await, Code::Aborted, "expected version 3");

    let current = pb::WithdrawFundsRequest { expected_version: Some(2), ..withdraw("acc", 5) };
    assert_eq!(client.withdraw_funds(current).await.unwrap().into_inner().version, 3);
    assert_eq!(count_events(&nats.url(), "acc").await, 3);
}

#[tokio::test]
async fn a_retried_command_returns_the_original_reply_and_appends_nothing() {
    let nats = NatsServer::start().await;
    let app = TestApp::spawn(&nats.url()).await;
    let mut client = app.client.clone();
    let open_once = pb::OpenAccountRequest { command_id: "open-1".into(), ..open("acc") };
    let opened = client.open_account(open_once.clone()).await.unwrap().into_inner();
    assert_eq!(client.open_account(open_once.clone()).await.unwrap().into_inner(), opened);

    let deposit_once = pb::DepositFundsRequest { command_id: "dep-1".into(), ..deposit("acc", 100) };
    let first = client.deposit_funds(deposit_once.clone()).await.unwrap().into_inner();
    client.deposit_funds(deposit("acc", 1)).await.unwrap();
    // The retry carries a version that is stale by now: still the original reply.
    let retry = pb::DepositFundsRequest { expected_version: Some(1), ..deposit_once.clone() };
    assert_eq!(client.deposit_funds(retry).await.unwrap().into_inner(), first);

    // A different command_id is a different command.
    let other = pb::DepositFundsRequest { command_id: "dep-2".into(), ..deposit("acc", 100) };
    assert_eq!(client.deposit_funds(other).await.unwrap().into_inner().version, 4);
    // The same key on another account is another command.
    let elsewhere = pb::OpenAccountRequest { command_id: "open-1".into(), ..open("acc-2") };
    assert_eq!(client.open_account(elsewhere).await.unwrap().into_inner().version, 1);
    assert_eq!(count_events(&nats.url(), "acc").await, 4);

    // A new instance (empty caches) recognises the retries from the log.
    app.stop().await;
    let app = TestApp::spawn(&nats.url()).await;
    let mut client = app.client.clone();
    assert_eq!(client.deposit_funds(deposit_once).await.unwrap().into_inner(), first);
    assert_eq!(client.open_account(open_once).await.unwrap().into_inner(), opened);
    assert_eq!(count_events(&nats.url(), "acc").await, 4);
}
