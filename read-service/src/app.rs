//! The queries: validated parameters in, rows out, after waiting for the
//! read model to reach `min_position` when one is given.

use std::time::Duration;

use read_model::{AccountRow, Backend, HistoryRow, Projection, ReadStore};
use shared::validation::AccountId;

use crate::{
    domain::{Page, PageCursor, PageSize, PageTokens},
    error::QueryError,
    freshness::Freshness,
    lookups::AccountLookups,
};

/// A page of rows and the token for the next one.
#[derive(Debug)]
pub struct Paged<T> {
    pub rows: Vec<T>,
    pub next_page_token: Option<String>,
}

/// How a query's consistency requirement was met, and how fresh what it
/// read is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Consistency {
    /// How long the query waited for `min_position`; `None` without one.
    pub waited: Option<Duration>,
    /// The position the read model had applied (for what the query reads)
    /// before it read: the answer includes at least this much of the log.
    pub as_of: u64,
}

/// The read side's queries over one read store.
pub struct Queries {
    store: ReadStore,
    lookups: AccountLookups,
    freshness: Freshness,
    tokens: PageTokens,
    max_wait: Duration,
}

impl Queries {
    /// Queries on `store`, whose pool holds `connections` connections.
    pub fn new(store: ReadStore, connections: u32, tokens: PageTokens, max_wait: Duration) -> Self {
        // SQLite answers from a local file on a worker thread per
        // connection: one lookup statement at a time, as large as the
        // queue, costs the least CPU (measured: 35 µs a query against 49
        // with eight). PostgreSQL is a network round trip away: use the pool.
        let statements = match store.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => connections as usize,
        };
        Self {
            freshness: Freshness::watch(store.clone()),
            lookups: AccountLookups::new(store.clone(), statements),
            store,
            tokens,
            max_wait,
        }
    }

    /// Waits (at most the server's maximum or `deadline`) until
    /// `projection` has applied `min_position` for `account` (every account
    /// if `None`); 0 means "as it is".
    async fn consistent(
        &self,
        projection: Projection,
        account: Option<&AccountId>,
        min_position: u64,
        deadline: Option<Duration>,
    ) -> Result<Consistency, QueryError> {
        let account = account.map(AccountId::as_str);
        let waited = if min_position == 0 {
            None
        } else {
            let limit = deadline.map_or(self.max_wait, |deadline| deadline.min(self.max_wait));
            Some(self.freshness.wait_for(projection, account, min_position, limit).await.map_err(QueryError::Behind)?)
        };
        Ok(Consistency { waited, as_of: self.freshness.applied(projection, account) })
    }

    /// One account.
    pub async fn account(
        &self,
        id: &AccountId,
        min_position: u64,
        deadline: Option<Duration>,
    ) -> Result<(AccountRow, Consistency), QueryError> {
        let consistency = self.consistent(Projection::AccountSummary, Some(id), min_position, deadline).await?;
        let account = self.lookups.account(id.as_str()).await?.ok_or_else(|| QueryError::NotFound(id.to_string()))?;
        Ok((account, consistency))
    }

    /// A page of accounts, ordered by id.
    pub async fn accounts(
        &self,
        owner: Option<String>,
        size: PageSize,
        page_token: &str,
        min_position: u64,
        deadline: Option<Duration>,
    ) -> Result<(Paged<AccountRow>, Consistency), QueryError> {
        let page = Page::Accounts { owner: owner.clone() };
        let after = match self.cursor(&page, page_token)? {
            Some(PageCursor::AfterAccount(id)) => Some(id),
            _ => None,
        };
        // A list reads every partition: it waits for all of them.
        let consistency = self.consistent(Projection::AccountSummary, None, min_position, deadline).await?;
        let mut rows = self.store.accounts(after.as_deref(), owner.as_deref(), size.get() + 1).await?;
        let next = self.next_page(&page, &mut rows, size, |row| PageCursor::AfterAccount(row.account_id.clone()));
        Ok((Paged { rows, next_page_token: next }, consistency))
    }

    /// A page of one account's history, in version order.
    pub async fn history(
        &self,
        id: &AccountId,
        size: PageSize,
        page_token: &str,
        min_position: u64,
        deadline: Option<Duration>,
    ) -> Result<(Paged<HistoryRow>, Consistency), QueryError> {
        let page = Page::History { account_id: id.to_string() };
        let after = match self.cursor(&page, page_token)? {
            Some(PageCursor::AfterVersion(version)) => version,
            _ => 0,
        };
        let consistency = self.consistent(Projection::AccountHistory, Some(id), min_position, deadline).await?;
        let mut rows = self.store.history(id.as_str(), after, size.get() + 1).await?;
        if rows.is_empty() && after == 0 {
            return Err(QueryError::NotFound(id.to_string()));
        }
        let next = self.next_page(&page, &mut rows, size, |row| PageCursor::AfterVersion(row.version));
        Ok((Paged { rows, next_page_token: next }, consistency))
    }

    fn cursor(&self, page: &Page, token: &str) -> Result<Option<PageCursor>, QueryError> {
        if token.is_empty() { Ok(None) } else { Ok(Some(self.tokens.check(page, token)?)) }
    }

    /// Trims the extra row fetched to learn whether there is a next page,
    /// and issues the token that continues after the last row kept.
    fn next_page<T>(
        &self,
        page: &Page,
        rows: &mut Vec<T>,
        size: PageSize,
        cursor: impl Fn(&T) -> PageCursor,
    ) -> Option<String> {
        if rows.len() <= size.get() as usize {
            return None;
        }
        rows.truncate(size.get() as usize);
        rows.last().map(|last| self.tokens.issue(page, &cursor(last)))
    }
}
