//! The read-service's queries.

use sqlx::{AssertSqlSafe, Row};

use crate::{
    AccountRow, Backend, DeadLetter, HistoryRow, Progress, ReadStore, StoreError,
    progress::read_progress,
    rows::{account_row, history_row},
    sql::*,
};

impl ReadStore {
    /// The accounts of `account_ids` that the read model has, in no
    /// particular order: many lookups in one statement.
    pub async fn accounts_by_id(&self, account_ids: &[String]) -> Result<Vec<AccountRow>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        select_accounts(&mut connection, self.backend, account_ids).await
    }

    /// Up to `limit` accounts with ids after `after`, ordered by id,
    /// optionally only those of `owner`.
    pub async fn accounts(
        &self,
        after: Option<&str>,
        owner: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AccountRow>, StoreError> {
        let after = after.unwrap_or("");
        let rows = match owner {
            Some(owner) => {
                const SQL: &str = concat!(
                    "SELECT ",
                    account_columns!(),
                    " FROM account_summary WHERE owner = $1 AND account_id > $2 ORDER BY account_id LIMIT $3"
                );
                sqlx::query(SQL).bind(owner).bind(after).bind(i64::from(limit)).fetch_all(&self.pool).await?
            }
            None => {
                const SQL: &str = concat!(
                    "SELECT ",
                    account_columns!(),
                    " FROM account_summary WHERE account_id > $1 ORDER BY account_id LIMIT $2"
                );
                sqlx::query(SQL).bind(after).bind(i64::from(limit)).fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(account_row).collect()
    }

    /// Up to `limit` history rows of `account_id` with versions after
    /// `after_version`, in version order.
    pub async fn history(
        &self,
        account_id: &str,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            history_columns!(),
            " FROM account_history WHERE account_id = $1 AND version > $2 ORDER BY version LIMIT $3"
        );
        let rows = sqlx::query(SQL)
            .bind(account_id)
            .bind(to_i64(after_version))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(history_row).collect()
    }

    /// The last position each projection has applied, per partition.
    pub async fn progress(&self) -> Result<Progress, StoreError> {
        read_progress(&self.pool).await
    }

    /// Whether the event at `position` was set aside as a dead letter.
    pub async fn is_dead_letter(&self, position: u64) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS found FROM dead_letters WHERE position = $1")
            .bind(to_i64(position))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Every dead letter, in log order.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(
            "SELECT position, subject, event_type, reason, headers, payload, dead_lettered_at_us \
             FROM dead_letters ORDER BY position",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    position: to_u64(row.try_get("position")?),
                    subject: row.try_get("subject")?,
                    event_type: row.try_get("event_type")?,
                    reason: row.try_get("reason")?,
                    headers: row.try_get("headers")?,
                    payload: row.try_get("payload")?,
                    dead_lettered_at_us: row.try_get("dead_lettered_at_us")?,
                })
            })
            .collect()
    }
}

/// `SELECT`s the summary rows of `account_ids`, `ROWS_PER_STATEMENT` at a
/// time.
pub(crate) async fn select_accounts(
    connection: &mut sqlx::AnyConnection,
    backend: Backend,
    account_ids: &[String],
) -> Result<Vec<AccountRow>, StoreError> {
    let mut found = Vec::with_capacity(account_ids.len());
    for chunk in account_ids.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT {} FROM account_summary WHERE account_id IN ({})",
            account_columns!(),
            list_placeholders(backend, chunk.len())
        );
        // Dynamic only in the number of placeholders.
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id.clone());
        }
        for row in query.fetch_all(&mut *connection).await? {
            found.push(account_row(&row)?);
        }
    }
    Ok(found)
}
