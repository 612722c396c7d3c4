//! Read-your-writes, paging and bad input, through read-service.

use std::collections::BTreeSet;

use shared::proto::bank::v1 as pb;
use tonic::Code;

use crate::{both_stores, helpers::*};

both_stores!(a_client_reads_its_own_writes);
async fn a_client_reads_its_own_writes(store: Store) {
    let stack = Stack::start(store).await;
    stack.open("acc-1", "Ada Lovelace").await;
    stack.deposit("acc-1", 1_500).await;
    let last = stack.withdraw("acc-1", 250).await;

    // No sleeping: min_position makes the query wait for the projection.
    let account = stack.account("acc-1", last.position).await;
    assert_eq!(account.balance, 1_250);
    assert_eq!(account.version, 3);
    assert_eq!(account.position, last.position);
    assert_eq!(account.owner, "Ada Lovelace");
    assert_eq!(account.status(), pb::AccountStatus::Open);
    let (opened, updated) = (account.opened_at.unwrap(), account.updated_at.unwrap());
    assert!((updated.seconds, updated.nanos) >= (opened.seconds, opened.nanos));

    let history = stack.history("acc-1", last.position).await;
    let summary: Vec<(u64, pb::EventKind, i64, i64)> =
        history.iter().map(|e| (e.version, e.kind(), e.amount, e.balance_after)).collect();
    assert_eq!(
        summary,
        [
            (1, pb::EventKind::AccountOpened, 0, 0),
            (2, pb::EventKind::FundsDeposited, 1_500, 1_500),
            (3, pb::EventKind::FundsWithdrawn, 250, 1_250)
        ]
    );

    let list = pb::ListAccountsRequest { min_position: last.position, ..Default::default() };
    let page = stack.queries.clone().list_accounts(list).await.unwrap().into_inner();
    assert_eq!(page.accounts.len(), 1);
    assert!(account.as_of_position >= last.position && page.as_of_position >= last.position);
    assert_eq!(page.accounts[0], pb::Account { as_of_position: 0, ..account }, "only GetAccount says it per account");
}

both_stores!(paging_returns_every_row_once_in_order);
async fn paging_returns_every_row_once_in_order(store: Store) {
    let stack = Stack::start(store).await;
    let mut last = 0;
    for i in 0..23 {
        let owner = if i % 2 == 0 { "Even" } else { "Odd" };
        last = stack.open(&format!("acc-{i:02}"), owner).await.position;
    }
    for _ in 0..11 {
        last = stack.deposit("acc-07", 3).await.position;
    }

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let request = pb::ListAccountsRequest { page_size: 5, page_token, min_position: last, owner: None };
        let page = stack.queries.clone().list_accounts(request).await.unwrap().into_inner();
        assert!(page.accounts.len() <= 5);
        pages += 1;
        seen.extend(page.accounts.into_iter().map(|a| a.account_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let expected: Vec<String> = (0..23).map(|i| format!("acc-{i:02}")).collect();
    assert_eq!(seen, expected, "every account once, in id order");
    assert_eq!(pages, 5);

    // The owner filter pages the same way.
    let mut odd = BTreeSet::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListAccountsRequest { page_size: 4, page_token, min_position: 0, owner: Some("Odd".into()) };
        let page = stack.queries.clone().list_accounts(request).await.unwrap().into_inner();
        for account in page.accounts {
            assert_eq!(account.owner, "Odd");
            assert!(odd.insert(account.account_id));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(odd.len(), 11);

    // History pages: 12 events of acc-07 by 5.
    let mut versions = Vec::new();
    let mut page_token = String::new();
    loop {
        let request =
            pb::GetAccountHistoryRequest { account_id: "acc-07".into(), page_size: 5, page_token, min_position: last };
        let page = stack.queries.clone().get_account_history(request).await.unwrap().into_inner();
        versions.extend(page.entries.iter().map(|e| e.version));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(versions, (1..=12).collect::<Vec<u64>>());

    // page_size 0 is the default (50), a huge one is clamped: all 23 at once.
    for page_size in [0, i32::MAX] {
        let request = pb::ListAccountsRequest { page_size, ..Default::default() };
        let page = stack.queries.clone().list_accounts(request).await.unwrap().into_inner();
        assert_eq!((page.accounts.len(), page.next_page_token.as_str()), (23, ""));
    }
}

#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>, needle: &str) {
    let status = result.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(needle), "{:?} does not mention {needle:?}", status.message());
}

both_stores!(bad_queries_get_precise_statuses);
async fn bad_queries_get_precise_statuses(store: Store) {
    let stack = Stack::start_with(store, &[], &["--max-consistency-wait", "300ms"]).await;
    let mut queries = stack.queries.clone();
    for i in 0..3 {
        stack.open(&format!("acc-{i}"), "Owner").await;
    }
    let first = queries
        .list_accounts(pb::ListAccountsRequest { page_size: 1, min_position: 3, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let token = first.next_page_token;
    assert!(!token.is_empty());

    let get = |account_id: &str| pb::GetAccountRequest { account_id: account_id.into(), min_position: 0 };
    assert_eq!(queries.get_account(get("nobody")).await.unwrap_err().code(), Code::NotFound);
    for bad in ["", "a.b", "*", &"x".repeat(65)] {
        assert_invalid(queries.get_account(get(bad)).await, "account_id");
    }
    let list = |page_size: i32, page_token: &str, owner: Option<&str>| pb::ListAccountsRequest {
        page_size,
        page_token: page_token.into(),
        owner: owner.map(str::to_owned),
        min_position: 0,
    };
    assert_invalid(queries.list_accounts(list(-1, "", None)).await, "page_size");
    assert_invalid(queries.list_accounts(list(1, "not-a-token", None)).await, "page_token");
    assert_invalid(queries.list_accounts(list(1, &token[..token.len() - 4], None)).await, "page_token");
    assert_invalid(queries.list_accounts(list(1, &token, Some("Someone else"))).await, "page_token");
    let history = pb::GetAccountHistoryRequest {
        account_id: "acc-0".into(),
        page_size: 1,
        page_token: token.clone(),
        min_position: 0,
    };
    assert_invalid(queries.get_account_history(history).await, "page_token");
    assert_invalid(queries.list_accounts(list(1, "", Some("bad\u{0}owner"))).await, "owner");

    // A position the log has not reached: UNAVAILABLE after the bound, saying how far behind.
    let status = queries
        .get_account(pb::GetAccountRequest { account_id: "acc-0".into(), min_position: 1_000_000 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("behind the requested min_position 1000000"), "{}", status.message());
    assert!(status.message().contains("up to position 3"), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_service_answers_every_query_on_a_postgres_role_that_may_only_select() {
    // Given the system on PostgreSQL (the projector owns the schema)...
    let stack = Stack::start(Store::postgres().await).await;
    stack.open("acc-1", "Ada").await;
    stack.open("acc-2", "Ada").await;
    let last = stack.deposit("acc-1", 40).await.position;

    // ...and a role that may only read the read model.
    let url = stack.store.url();
    let role = format!("reader_{}", uuid::Uuid::new_v4().simple());
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
    for statement in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"),
    ] {
        sqlx::Executor::execute(&mut admin, sqlx::AssertSqlSafe(statement)).await.unwrap();
    }
    let (_, database) = url.rsplit_once('/').unwrap();
    let (server, _) = url.trim_start_matches("postgres://").split_once('/').unwrap();
    let host = server.rsplit_once('@').map_or(server, |(_, host)| host);
    let reader_url = format!("postgres://{role}@{host}/{database}");
    let mut reader = <sqlx::AnyConnection as sqlx::Connection>::connect(&reader_url).await.unwrap();
    let write = sqlx::Executor::execute(&mut reader, "DELETE FROM account_summary").await;
    assert!(write.is_err(), "the role may not write");

    // When a read-service runs on that role, then it answers every query.
    let read = spawn_read_service(&reader_url, &[]).await;
    let mut queries = pb::account_query_service_client::AccountQueryServiceClient::new(channel(read.addr));
    let account = queries
        .get_account(pb::GetAccountRequest { account_id: "acc-1".into(), min_position: last })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((account.balance, account.version), (40, 2));
    let list = pb::ListAccountsRequest { owner: Some("Ada".into()), min_position: last, ..Default::default() };
    let accounts = queries.list_accounts(list).await.unwrap().into_inner().accounts;
    assert_eq!(accounts.len(), 2);
    let history = pb::GetAccountHistoryRequest { account_id: "acc-1".into(), min_position: last, ..Default::default() };
    assert_eq!(queries.get_account_history(history).await.unwrap().into_inner().entries.len(), 2);
    let missing = queries.get_account(pb::GetAccountRequest { account_id: "nope".into(), min_position: 0 }).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);

    drop(read);
    drop(reader);
    let _ =
        sqlx::Executor::execute(&mut admin, sqlx::AssertSqlSafe(format!("REASSIGN OWNED BY {role} TO postgres"))).await;
    let _ = sqlx::Executor::execute(&mut admin, sqlx::AssertSqlSafe(format!("DROP OWNED BY {role}"))).await;
    let _ = sqlx::Executor::execute(&mut admin, sqlx::AssertSqlSafe(format!("DROP ROLE {role}"))).await;
}
