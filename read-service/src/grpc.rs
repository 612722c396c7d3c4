//! The gRPC face of the read side: validates `bank.v1` query requests,
//! runs them, and turns rows into protobuf. The only module that knows the
//! protobuf query types.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use opentelemetry::trace::FutureExt;
use read_model::{AccountRow, AccountStatus, EventKind, HistoryRow};
use shared::{
    proto::bank::v1::{
        self as pb,
        account_query_service_server::{AccountQueryService, AccountQueryServiceServer},
    },
    validation::{AccountId, Owner, ValidationError},
};
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    app::Queries,
    domain::PageSize,
    error::QueryError,
    telemetry::{Answered, QueryTelemetry, QueryType},
};

/// `bank.v1.AccountQueryService` over [`Queries`], which arrive once the
/// read store is connected (UNAVAILABLE until then).
pub struct QueryService {
    queries: Arc<OnceLock<Queries>>,
    telemetry: QueryTelemetry,
}

/// A service whose queries are not connected yet.
impl Default for QueryService {
    fn default() -> Self {
        Self { queries: Arc::default(), telemetry: QueryTelemetry::default() }
    }
}

impl QueryService {
    /// Where the connected queries go.
    pub fn queries_slot(&self) -> Arc<OnceLock<Queries>> {
        Arc::clone(&self.queries)
    }

    /// The tonic service.
    pub fn into_server(self) -> AccountQueryServiceServer<Self> {
        AccountQueryServiceServer::new(self)
    }

    fn queries(&self) -> Result<&Queries, QueryError> {
        self.queries.get().ok_or(QueryError::NotReady)
    }

    async fn handle<T>(
        &self,
        query: QueryType,
        run: impl Future<Output = Result<(T, Answered), QueryError>>,
    ) -> Result<Response<T>, Status> {
        let call = self.telemetry.start(query);
        let outcome = run.with_context(call.cx.clone()).await;
        call.finish(outcome.as_ref().map(|(_, answered)| answered));
        outcome.map(|(reply, _)| Response::new(reply)).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl AccountQueryService for QueryService {
    async fn get_account(&self, request: Request<pb::GetAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let deadline = deadline(request.metadata());
        let request = request.into_inner();
        self.handle(QueryType::GetAccount, async {
            let id = AccountId::parse(request.account_id)?;
            let (row, consistency) = self.queries()?.account(&id, request.min_position, deadline).await?;
            let answered = Answered::new(consistency, account_provenance(std::slice::from_ref(&row)));
            Ok((pb::Account { as_of_position: consistency.as_of, ..account(row) }, answered))
        })
        .await
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let deadline = deadline(request.metadata());
        let request = request.into_inner();
        self.handle(QueryType::ListAccounts, async {
            let size = PageSize::parse(request.page_size)?;
            // An empty filter (as grpcurl sends `"owner": ""`) is no filter.
            let owner = request.owner.filter(|owner| !owner.is_empty()).map(validate_owner).transpose()?;
            let (page, consistency) =
                self.queries()?.accounts(owner, size, &request.page_token, request.min_position, deadline).await?;
            let answered = Answered::new(consistency, account_provenance(&page.rows));
            let reply = pb::ListAccountsResponse {
                accounts: page.rows.into_iter().map(account).collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
                as_of_position: consistency.as_of,
            };
            Ok((reply, answered))
        })
        .await
    }

    async fn get_account_history(
        &self,
        request: Request<pb::GetAccountHistoryRequest>,
    ) -> Result<Response<pb::GetAccountHistoryResponse>, Status> {
        let deadline = deadline(request.metadata());
        let request = request.into_inner();
        self.handle(QueryType::GetAccountHistory, async {
            let id = AccountId::parse(request.account_id)?;
            let size = PageSize::parse(request.page_size)?;
            let (page, consistency) =
                self.queries()?.history(&id, size, &request.page_token, request.min_position, deadline).await?;
            let rows = page.rows.iter().map(|row| (row.occurred_at_us, row.provenance.projection_trace.as_deref()));
            let answered = Answered::new(consistency, rows);
            let reply = pb::GetAccountHistoryResponse {
                entries: page.rows.into_iter().map(history_entry).collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
                as_of_position: consistency.as_of,
            };
            Ok((reply, answered))
        })
        .await
    }
}

/// The owner filter: an owner's name, as the write side accepts it.
fn validate_owner(owner: String) -> Result<String, ValidationError> {
    Owner::parse(owner).map(Owner::into_inner)
}

/// The time left before the client's deadline (`grpc-timeout`), less a
/// margin so that the answer (even UNAVAILABLE) arrives before it.
fn deadline(metadata: &MetadataMap) -> Option<Duration> {
    let timeout = shared::deadline::parse(metadata.get(shared::deadline::GRPC_TIMEOUT)?.to_str().ok()?)?;
    Some(timeout.mul_f64(0.9))
}

/// Per account row, the time of its latest event and the projection span
/// that wrote it.
fn account_provenance(rows: &[AccountRow]) -> impl Iterator<Item = (i64, Option<&str>)> {
    rows.iter().map(|row| (row.updated_at_us, row.provenance.projection_trace.as_deref()))
}

fn account(row: AccountRow) -> pb::Account {
    pb::Account {
        account_id: row.account_id,
        owner: row.owner,
        balance: row.balance,
        status: match row.status {
            AccountStatus::Open => pb::AccountStatus::Open,
            AccountStatus::Closed => pb::AccountStatus::Closed,
        }
        .into(),
        version: row.version,
        position: row.position,
        opened_at: Some(timestamp(row.opened_at_us)),
        updated_at: Some(timestamp(row.updated_at_us)),
        projected_at: row.provenance.projected_at_us.map(timestamp),
        as_of_position: 0,
    }
}

fn history_entry(row: HistoryRow) -> pb::HistoryEntry {
    pb::HistoryEntry {
        version: row.version,
        position: row.position,
        kind: match row.kind {
            EventKind::AccountOpened => pb::EventKind::AccountOpened,
            EventKind::FundsDeposited => pb::EventKind::FundsDeposited,
            EventKind::FundsWithdrawn => pb::EventKind::FundsWithdrawn,
            EventKind::AccountClosed => pb::EventKind::AccountClosed,
        }
        .into(),
        amount: row.amount,
        balance_after: row.balance_after,
        occurred_at: Some(timestamp(row.occurred_at_us)),
        projected_at: row.provenance.projected_at_us.map(timestamp),
        trace_id: row
            .command_trace
            .as_deref()
            .and_then(shared::propagation::from_traceparent)
            .map(|command| command.trace_id().to_string())
            .unwrap_or_default(),
    }
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    #[test]
    fn the_client_deadline_is_read_from_grpc_timeout() {
        let mut metadata = MetadataMap::new();
        assert_eq!(deadline(&metadata), None);
        metadata.insert("grpc-timeout", MetadataValue::from_static("100m"));
        assert_eq!(deadline(&metadata), Some(Duration::from_millis(90)));
        metadata.insert("grpc-timeout", MetadataValue::from_static("2S"));
        assert_eq!(deadline(&metadata), Some(Duration::from_millis(1800)));
        metadata.insert("grpc-timeout", MetadataValue::from_static("bogus"));
        assert_eq!(deadline(&metadata), None);
    }

    #[test]
    fn timestamps_keep_microseconds() {
        assert_eq!(timestamp(1_500_000), prost_types::Timestamp { seconds: 1, nanos: 500_000_000 });
    }
}
