//! Hostile input on every RPC of both services: an expired deadline, a
//! message beyond the configured maximum, malformed trace context, extreme
//! page sizes and forged page tokens. Each gets a precise status, and the
//! event log and the read model are exactly what they were before.
//! (Field-by-field validation is in write-service's `commands.rs` and in
//! `queries.rs`; no request message carries an enum: `AccountStatus` and
//! `EventKind` only appear in replies.)

use std::time::Duration;

use shared::proto::bank::v1 as pb;
use tonic::{Code, Request, Status, metadata::MetadataValue};

use crate::helpers::*;

/// The calls of both services, each built from `make` so that a test can
/// dress the request (deadline, metadata) before sending it.
async fn every_rpc(
    stack: &Stack,
    account: &str,
    owner: &str,
    make: impl Fn(&mut tonic::metadata::MetadataMap) -> Option<Duration>,
) -> Vec<(&'static str, Result<(), Status>)> {
    fn dress<T>(message: T, make: &impl Fn(&mut tonic::metadata::MetadataMap) -> Option<Duration>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(timeout) = make(request.metadata_mut()) {
            request.set_timeout(timeout);
        }
        request
    }
    let (mut commands, mut queries) = (stack.commands.clone(), stack.queries.clone());
    let id = account.to_owned();
    vec![
        (
            "OpenAccount",
            commands
                .open_account(dress(
                    pb::OpenAccountRequest {
                        account_id: format!("{id}-new"),
                        owner: owner.into(),
                        command_id: "".into(),
                    },
                    &make,
                ))
                .await
                .map(drop),
        ),
        (
            "DepositFunds",
            commands
                .deposit_funds(dress(
                    pb::DepositFundsRequest { account_id: id.clone(), amount: 5, ..Default::default() },
                    &make,
                ))
                .await
                .map(drop),
        ),
        (
            "WithdrawFunds",
            commands
                .withdraw_funds(dress(
                    pb::WithdrawFundsRequest { account_id: id.clone(), amount: 5, ..Default::default() },
                    &make,
                ))
                .await
                .map(drop),
        ),
        (
            "CloseAccount",
            commands
                .close_account(dress(pb::CloseAccountRequest { account_id: id.clone(), ..Default::default() }, &make))
                .await
                .map(drop),
        ),
        (
            "GetAccount",
            queries
                .get_account(dress(pb::GetAccountRequest { account_id: id.clone(), min_position: 0 }, &make))
                .await
                .map(drop),
        ),
        (
            "ListAccounts",
            queries
                .list_accounts(dress(
                    pb::ListAccountsRequest { owner: Some(owner.into()), ..Default::default() },
                    &make,
                ))
                .await
                .map(drop),
        ),
        (
            "GetAccountHistory",
            queries
                .get_account_history(dress(
                    pb::GetAccountHistoryRequest { account_id: id, ..Default::default() },
                    &make,
                ))
                .await
                .map(drop),
        ),
    ]
}

/// Messages in the event log.
async fn log_length(stack: &Stack) -> u64 {
    let mut stream = stack.jetstream().await.get_stream(STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_precise_statuses_and_change_nothing() {
    let stack = Stack::start(Store::sqlite()).await;
    let opened = stack.open("target", "Ada").await;
    let before = stack.account("target", opened.position).await;
    let events_before = log_length(&stack).await;
    assert_eq!(events_before, opened.position);

    // An expired deadline: the server refuses it before any work, as
    // DEADLINE_EXCEEDED (shared::grpc_telemetry's unit test shows the
    // handler never runs). tonic's client enforces the deadline too and may
    // give up first, as CANCELLED "Timeout expired"; either way nothing
    // changes (checked at the end).
    for (rpc, result) in every_rpc(&stack, "target", "Ada", |_| Some(Duration::ZERO)).await {
        let status = result.expect_err(rpc);
        match status.code() {
            Code::DeadlineExceeded => assert!(status.message().contains("deadline"), "{rpc}: {}", status.message()),
            Code::Cancelled => assert_eq!(status.message(), "Timeout expired", "{rpc}"),
            other => panic!("{rpc}: {other:?} {status:?}"),
        }
    }
    assert_eq!(log_length(&stack).await, events_before);

    // Larger than MAX_REQUEST_BYTES (64 KiB by default): OUT_OF_RANGE, before
    // the message is even decoded (so before any validation).
    let huge = "o".repeat(100 * 1024);
    for (rpc, result) in every_rpc(&stack, &huge, &huge, |_| None).await {
        let status = result.expect_err(rpc);
        assert_eq!(status.code(), Code::OutOfRange, "{rpc}: {status:?}");
    }

    // Malformed trace context is ignored, never an error: the calls behave
    // exactly as without it (open another account, deposit 5, withdraw 5,
    // close, and the three queries).
    let garbage = [
        ("traceparent", "00-zzzz-not-hex-01"),
        ("traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tracestate", "=,=,,key-without-value,\u{7f}"),
        ("baggage", "%%%;;;=,k=v=w,;"),
    ];
    let results = every_rpc(&stack, "target", "Ada", |metadata| {
        for (key, value) in garbage {
            if let Ok(value) = MetadataValue::try_from(value) {
                metadata.append(key, value);
            }
        }
        None
    })
    .await;
    for (rpc, result) in &results {
        assert!(result.is_ok(), "{rpc} with malformed trace context: {result:?}");
    }
    // OpenAccount, DepositFunds, WithdrawFunds and CloseAccount were accepted.
    assert_eq!(log_length(&stack).await, events_before + 4);

    // Extreme page sizes: clamped, or refused when negative.
    let mut queries = stack.queries.clone();
    let clamped = pb::ListAccountsRequest { page_size: i32::MAX, ..Default::default() };
    let page = queries.list_accounts(clamped).await.unwrap().into_inner();
    assert!(!page.accounts.is_empty() && page.accounts.len() <= 500, "{}", page.accounts.len());
    let negative =
        pb::GetAccountHistoryRequest { account_id: "target".into(), page_size: i32::MIN, ..Default::default() };
    assert_eq!(queries.get_account_history(negative).await.unwrap_err().code(), Code::InvalidArgument);

    // Forged page tokens: one flipped character anywhere, or a token of
    // the right shape that this server never signed.
    let first = queries
        .list_accounts(pb::ListAccountsRequest { page_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!first.is_empty());
    let mut forged = vec![first.chars().rev().collect::<String>(), format!("{first}A"), "A".repeat(first.len())];
    for index in [0, first.len() / 2, first.len() - 1] {
        let mut chars: Vec<char> = first.chars().collect();
        chars[index] = if chars[index] == 'A' { 'B' } else { 'A' };
        forged.push(chars.into_iter().collect());
    }
    for token in forged {
        let request = pb::ListAccountsRequest { page_size: 1, page_token: token.clone(), ..Default::default() };
        let status = queries.list_accounts(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{token}: {status:?}");
        assert!(status.message().contains("page_token"), "{}", status.message());
    }

    // Nothing else reached the log, and the read model agrees with it.
    let events_after = log_length(&stack).await;
    assert_eq!(events_after, events_before + 4);
    let after = stack.account("target", events_after).await;
    assert_eq!((after.balance, after.version), (before.balance, before.version + 3));
    assert_eq!(after.balance, 0);
    assert_eq!(after.status(), pb::AccountStatus::Closed);
}
