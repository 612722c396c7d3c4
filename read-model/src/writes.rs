//! The projector's writes: batches of events applied to some partitions in
//! one transaction, resets and re-layouts for rebuilds.

use std::collections::BTreeMap;

use sqlx::AssertSqlSafe;

use crate::{
    AccountRow, Backend, Checkpoints, DeadLetter, HistoryRow, Projection, ReadStore, StoreError,
    progress::read_progress, queries::select_accounts, rows::history_row, sql::*,
};

impl ReadStore {
    /// Starts a batch of the partitions `owned` (of `partitions`):
    /// everything written through it, checkpoints included, commits
    /// atomically or not at all.
    pub async fn begin(&self, owned: &[u32], partitions: u32) -> Result<ProjectionBatch, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Sqlite {
            // Take the write lock now rather than on the first write, so a
            // concurrent writer waits here instead of failing mid-batch.
            sqlx::query("UPDATE projection_checkpoints SET position = position WHERE 0 = 1").execute(&mut *tx).await?;
        } else {
            // Serialise the writers of a partition (its projector, one that
            // lost the partition's lease but has not noticed yet, a rebuild);
            // other partitions' projectors go on in parallel.
            let sql = format!(
                "SELECT position FROM projection_checkpoints WHERE partition_index IN ({}) FOR UPDATE",
                list_placeholders(self.backend, owned.len())
            );
            // Dynamic only in the number of placeholders.
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for partition in owned {
                query = query.bind(*partition as i32);
            }
            query.fetch_all(&mut *tx).await?;
        }
        let progress = read_progress(&mut *tx).await?;
        if progress.partitions() != partitions {
            return Err(StoreError::Partitions { found: progress.partitions(), wanted: partitions });
        }
        let checkpoints: BTreeMap<u32, Checkpoints> = owned.iter().map(|p| (*p, progress.partition(*p))).collect();
        Ok(ProjectionBatch { tx, backend: self.backend, original: checkpoints.clone(), checkpoints })
    }

    /// Empties `projection` and sets its checkpoints to 0, so that it is
    /// replayed from the start of the log.
    pub async fn reset(&self, projection: Projection) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", projection.name()))).execute(&mut *tx).await?;
        sqlx::query("UPDATE projection_checkpoints SET position = 0 WHERE projection = $1")
            .bind(projection.name())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Lays the read model out in `partitions` partitions. Unless it already
    /// is, every projection is emptied and starts over (a rebuild).
    pub async fn repartition(&self, partitions: u32) -> Result<(), StoreError> {
        let partitions = partitions.max(1);
        let mut tx = self.pool.begin().await?;
        if read_progress(&mut *tx).await?.partitions() == partitions {
            return Ok(());
        }
        sqlx::query("DELETE FROM projection_checkpoints").execute(&mut *tx).await?;
        for projection in Projection::ALL {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", projection.name()))).execute(&mut *tx).await?;
            for partition in 0..partitions {
                sqlx::query(
                    "INSERT INTO projection_checkpoints (projection, partition_index, position) VALUES ($1, $2, 0)",
                )
                .bind(projection.name())
                .bind(partition as i32)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Writes of one batch of events to some partitions, in one transaction.
pub struct ProjectionBatch {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    /// Per owned partition, the checkpoints as of this batch.
    checkpoints: BTreeMap<u32, Checkpoints>,
    original: BTreeMap<u32, Checkpoints>,
}

impl ProjectionBatch {
    /// The checkpoints of every partition of the batch, as of this batch
    /// (including its own advances).
    pub fn checkpoints(&self) -> &BTreeMap<u32, Checkpoints> {
        &self.checkpoints
    }

    /// Records that `projection` has applied everything of `partition` up
    /// to `position`.
    pub fn advance(&mut self, projection: Projection, partition: u32, position: u64) {
        if let Some(checkpoints) = self.checkpoints.get_mut(&partition) {
            checkpoints.set(projection, position);
        }
    }

    /// The summary rows of `account_ids` (those that exist), as of this
    /// batch: one query per 500 ids rather than one per account.
    pub async fn accounts(&mut self, account_ids: &[String]) -> Result<Vec<AccountRow>, StoreError> {
        select_accounts(&mut self.tx, self.backend, account_ids).await
    }

    /// The latest history row of each of `account_ids` (those that have
    /// one), as of this batch.
    pub async fn last_histories(&mut self, account_ids: &[String]) -> Result<Vec<HistoryRow>, StoreError> {
        let mut found = Vec::with_capacity(account_ids.len());
        for chunk in account_ids.chunks(ROWS_PER_STATEMENT) {
            // One lookup per account at the end of its primary-key range,
            // O(log n) however long the history. (A GROUP BY over the
            // accounts' rows read their whole history, and PostgreSQL's
            // generic plan for it turned into a hash join over the table:
            // catch-up slowed down as histories grew.) SQLite answers the
            // correlated MAX from the index; PostgreSQL needs the LATERAL
            // LIMIT 1 to do the same in a prepared statement.
            let ids = placeholders(self.backend, chunk.len(), 1);
            let sql = match self.backend {
                Backend::Sqlite => format!(
                    "WITH ids (id) AS (VALUES {ids}) \
                     SELECT h.account_id, h.version, h.position, h.kind, h.amount, h.balance_after, \
                     h.occurred_at_us, h.command_trace, h.projected_at_us, h.projection_trace FROM ids JOIN account_history h ON h.account_id = ids.id \
                     AND h.version = (SELECT MAX(m.version) FROM account_history m WHERE m.account_id = ids.id)"
                ),
                Backend::Postgres => format!(
                    "SELECT h.account_id, h.version, h.position, h.kind, h.amount, h.balance_after, \
                     h.occurred_at_us, h.command_trace, h.projected_at_us, h.projection_trace FROM (VALUES {ids}) AS ids (id) CROSS JOIN LATERAL \
                     (SELECT * FROM account_history m WHERE m.account_id = ids.id \
                     ORDER BY m.version DESC LIMIT 1) h"
                ),
            };
            // Dynamic only in the number of placeholders.
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id.clone());
            }
            for row in query.fetch_all(&mut *self.tx).await? {
                found.push(history_row(&row)?);
            }
        }
        Ok(found)
    }

    /// Inserts or replaces summary rows.
    pub async fn upsert_accounts(&mut self, rows: &[AccountRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO account_summary ({}) VALUES {} ON CONFLICT (account_id) DO UPDATE SET \
                 owner = excluded.owner, balance = excluded.balance, status = excluded.status, \
                 version = excluded.version, position = excluded.position, \
                 opened_at_us = excluded.opened_at_us, updated_at_us = excluded.updated_at_us, \
                 projected_at_us = excluded.projected_at_us, projection_trace = excluded.projection_trace",
                account_columns!(),
                placeholders(self.backend, chunk.len(), 10)
            );
            // Dynamic only in the number of placeholders.
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for row in chunk {
                query = query
                    .bind(row.account_id.clone())
                    .bind(row.owner.clone())
                    .bind(row.balance)
                    .bind(row.status.as_str())
                    .bind(to_i64(row.version))
                    .bind(to_i64(row.position))
                    .bind(row.opened_at_us)
                    .bind(row.updated_at_us)
                    .bind(row.provenance.projected_at_us)
                    .bind(row.provenance.projection_trace.clone());
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Appends history rows.
    pub async fn insert_history(&mut self, rows: &[HistoryRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO account_history ({}) VALUES {}",
                history_columns!(),
                placeholders(self.backend, chunk.len(), 10)
            );
            // Dynamic only in the number of placeholders.
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for row in chunk {
                query = query
                    .bind(row.account_id.clone())
                    .bind(to_i64(row.version))
                    .bind(to_i64(row.position))
                    .bind(row.kind.as_str())
                    .bind(row.amount)
                    .bind(row.balance_after)
                    .bind(row.occurred_at_us)
                    .bind(row.command_trace.clone())
                    .bind(row.provenance.projected_at_us)
                    .bind(row.provenance.projection_trace.clone());
            }
            query.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Sets an event aside (idempotent: a dead letter is recorded once).
    pub async fn dead_letter(&mut self, letter: &DeadLetter) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO dead_letters (position, subject, event_type, reason, headers, payload, dead_lettered_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (position) DO NOTHING",
        )
        .bind(to_i64(letter.position))
        .bind(letter.subject.clone())
        .bind(letter.event_type.clone())
        .bind(letter.reason.clone())
        .bind(letter.headers.clone())
        .bind(letter.payload.clone())
        .bind(letter.dead_lettered_at_us)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Writes the advanced checkpoints and commits. Fails (and rolls back)
    /// if another writer moved a checkpoint since [`ReadStore::begin`].
    pub async fn commit(mut self) -> Result<(), StoreError> {
        for (partition, checkpoints) in &self.checkpoints {
            let original = self.original.get(partition).copied().unwrap_or_default();
            for projection in Projection::ALL {
                let (old, new) = (original.get(projection), checkpoints.get(projection));
                if old == new {
                    continue;
                }
                let updated = sqlx::query(
                    "UPDATE projection_checkpoints SET position = $1 \
                     WHERE projection = $2 AND partition_index = $3 AND position = $4",
                )
                .bind(to_i64(new))
                .bind(projection.name())
                .bind(*partition as i32)
                .bind(to_i64(old))
                .execute(&mut *self.tx)
                .await?;
                if updated.rows_affected() != 1 {
                    return Err(StoreError::CheckpointMoved(projection.name()));
                }
            }
        }
        self.tx.commit().await?;
        Ok(())
    }
}
