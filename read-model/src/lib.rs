//! The read store: the read model's schema (migrations for SQLite and
//! PostgreSQL) and every query on it. The projector is its only writer
//! ([`ReadStore::begin`], [`ProjectionBatch`]); read-service only reads.
//!
//! One code path serves both stores through sqlx's `Any` driver: the SQL is
//! portable (`$N` parameters work on both), and where the stores must
//! differ the code branches on [`Backend`] (`?` placeholders in generated
//! SQLite statements, `last_histories`, the batch's locking, leases);
//! the migrations are written once per store (docs/adr/0008).

use std::{collections::BTreeMap, path::Path, str::FromStr, time::Duration};

use sqlx::{
    AnyPool, AssertSqlSafe, Row,
    any::{AnyPoolOptions, AnyRow},
    migrate::Migrator,
};

mod leases;

pub use leases::PartitionLeases;

// `ignore_missing`: a schema migrated by a newer release (versions this one
// does not know) is still one this release can run on, because migrations
// only ever add (docs/adr/0003-expand-only-migrations.md). Without it sqlx
// refuses, and a rollback after an upgrade could not start.
static SQLITE_MIGRATIONS: Migrator = Migrator { ignore_missing: true, ..sqlx::migrate!("./migrations/sqlite") };
static POSTGRES_MIGRATIONS: Migrator = Migrator { ignore_missing: true, ..sqlx::migrate!("./migrations/postgres") };

/// Why the read store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `READ_STORE_URL` is neither `sqlite://…` nor `postgres://…`. Only
    /// the scheme is kept: the rest of a URL may hold a password.
    #[error("unsupported read store URL scheme {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// The SQLite file's folder cannot be created.
    #[error("cannot create the folder of {path}: {source}")]
    Folder { path: String, source: std::io::Error },
    /// A query failed (connection lost, lock timeout, constraint...).
    #[error("read store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// The schema migrations failed.
    #[error("read store migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Another writer moved a projection's checkpoint during this batch.
    #[error("projection {0}'s checkpoint moved under this batch")]
    CheckpointMoved(&'static str),
    /// The read model is laid out in another number of partitions than the
    /// projector was started with (or was re-laid out under it).
    #[error(
        "the read model is projected in {found} partition(s), not {wanted}: run `projector rebuild` with \
         PROJECTOR_PARTITIONS={wanted} to re-lay it out (docs/scaling.md)"
    )]
    Partitions { found: u32, wanted: u32 },
    /// What was asked needs PostgreSQL (SQLite is one local file, for one
    /// projector process).
    #[error("{0} need(s) PostgreSQL as the read store")]
    NeedsPostgres(&'static str),
    /// The read store's schema is missing or older than this build reads.
    #[error(
        "the read store's schema is at migration {applied}, this release reads {needed}: run `projector migrate` \
         of this release (or start its projector with READ_STORE_MIGRATE=true, the default)"
    )]
    Schema { applied: i64, needed: i64 },
    /// A row holds a value this version does not know.
    #[error("read store holds an unexpected value: {0}")]
    Corrupt(String),
}

/// Which database the store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Whether an account accepts commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Open,
    Closed,
}

impl AccountStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

impl FromStr for AccountStatus {
    type Err = StoreError;
    fn from_str(value: &str) -> Result<Self, StoreError> {
        match value {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            other => Err(StoreError::Corrupt(format!("account status {other:?}"))),
        }
    }
}

/// What kind of event a history row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    AccountOpened,
    FundsDeposited,
    FundsWithdrawn,
    AccountClosed,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::AccountOpened => "account_opened",
            Self::FundsDeposited => "funds_deposited",
            Self::FundsWithdrawn => "funds_withdrawn",
            Self::AccountClosed => "account_closed",
        }
    }
}

impl FromStr for EventKind {
    type Err = StoreError;
    fn from_str(value: &str) -> Result<Self, StoreError> {
        match value {
            "account_opened" => Ok(Self::AccountOpened),
            "funds_deposited" => Ok(Self::FundsDeposited),
            "funds_withdrawn" => Ok(Self::FundsWithdrawn),
            "account_closed" => Ok(Self::AccountClosed),
            other => Err(StoreError::Corrupt(format!("event kind {other:?}"))),
        }
    }
}

/// One row of `account_summary`: an account's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub account_id: String,
    pub owner: String,
    pub balance: i64,
    pub status: AccountStatus,
    pub version: u64,
    pub position: u64,
    pub opened_at_us: i64,
    pub updated_at_us: i64,
}

/// One row of `account_history`: one event with the balance it left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub account_id: String,
    pub version: u64,
    pub position: u64,
    pub kind: EventKind,
    pub amount: i64,
    pub balance_after: i64,
    pub occurred_at_us: i64,
}

/// An event set aside by the projector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub position: u64,
    pub subject: String,
    pub event_type: Option<String>,
    pub reason: String,
    /// The message's headers, one `name: value` per line.
    pub headers: String,
    pub payload: Vec<u8>,
    pub dead_lettered_at_us: i64,
}

/// The projections the read model holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    /// `account_summary`: one row per account.
    AccountSummary,
    /// `account_history`: one row per event.
    AccountHistory,
}

impl Projection {
    /// Every projection.
    pub const ALL: [Projection; 2] = [Projection::AccountSummary, Projection::AccountHistory];

    /// The projection's name, as in checkpoints, spans and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::AccountSummary => "account_summary",
            Self::AccountHistory => "account_history",
        }
    }
}

impl FromStr for Projection {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == value)
            .ok_or_else(|| format!("unknown projection {value:?}; known: account_summary, account_history"))
    }
}

/// The last position each projection has applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoints {
    pub account_summary: u64,
    pub account_history: u64,
}

impl Checkpoints {
    /// `projection`'s checkpoint.
    pub fn get(&self, projection: Projection) -> u64 {
        match projection {
            Projection::AccountSummary => self.account_summary,
            Projection::AccountHistory => self.account_history,
        }
    }

    /// Sets `projection`'s checkpoint.
    pub fn set(&mut self, projection: Projection, position: u64) {
        match projection {
            Projection::AccountSummary => self.account_summary = position,
            Projection::AccountHistory => self.account_history = position,
        }
    }

    /// The position every projection has reached.
    pub fn min(&self) -> u64 {
        self.account_summary.min(self.account_history)
    }

    /// Per projection, the lowest of `all` (0 if `all` is empty).
    pub fn lowest<'a>(all: impl IntoIterator<Item = &'a Checkpoints>) -> Checkpoints {
        all.into_iter()
            .copied()
            .reduce(|a, b| Checkpoints {
                account_summary: a.account_summary.min(b.account_summary),
                account_history: a.account_history.min(b.account_history),
            })
            .unwrap_or_default()
    }
}

/// The partition of the accounts that `account_id` belongs to, of
/// `partitions` (at least 1): FNV-1a of the id's bytes, modulo the count.
/// Part of the read model's layout: changing it means a rebuild.
pub fn partition_of(account_id: &str, partitions: u32) -> u32 {
    fnv1a(account_id) % partitions.max(1)
}

/// 32-bit FNV-1a: stable across versions and platforms, unlike std's hasher.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |hash, byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

/// How far the read model is: every partition's checkpoints. Partition `k`
/// at position `p` means every event of its accounts up to `p` is applied
/// (each partition's projector reads the whole log in order and moves its
/// checkpoint over the other partitions' events too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Indexed by partition.
    partitions: Vec<Checkpoints>,
}

impl Progress {
    /// How many partitions the read model is projected in.
    pub fn partitions(&self) -> u32 {
        self.partitions.len() as u32
    }

    /// Partition `index`'s checkpoints (0 for a partition it does not have).
    pub fn partition(&self, index: u32) -> Checkpoints {
        self.partitions.get(index as usize).copied().unwrap_or_default()
    }

    /// How far `projection` has applied the events of `account_id`: its
    /// partition's checkpoint.
    pub fn of_account(&self, projection: Projection, account_id: &str) -> u64 {
        self.partition(partition_of(account_id, self.partitions())).get(projection)
    }

    /// How far `projection` has applied the events of every account: the
    /// lowest partition's checkpoint.
    pub fn of_all(&self, projection: Projection) -> u64 {
        Checkpoints::lowest(&self.partitions).get(projection)
    }

    /// Whether nothing has been applied yet, in any partition.
    pub fn is_empty(&self) -> bool {
        self.partitions.iter().all(|c| c.account_summary == 0 && c.account_history == 0)
    }
}

/// A connection pool to the read store.
#[derive(Clone)]
pub struct ReadStore {
    pool: AnyPool,
    backend: Backend,
}

// === impl ReadStore: connecting ===

impl ReadStore {
    /// Connects to `url` (`sqlite://PATH` or `postgres://…`) and brings the
    /// schema up to date: the way in of whoever migrates (`projector
    /// migrate`, or the projector with `READ_STORE_MIGRATE=true`). A
    /// SQLite file (and its folder) is created if missing and put in WAL
    /// mode, so readers in other processes never block the writer.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let store = Self::pool(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to `url` without changing anything: the read-service's way
    /// in, which works on a role that may only SELECT. Fails until the
    /// schema this build reads is there (the projector, or `projector
    /// migrate`, puts it there).
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let store = Self::pool(url, max_connections).await?;
        let migrator = match store.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        let needed = migrator.iter().map(|migration| migration.version).max().unwrap_or(0);
        let applied: i64 = sqlx::query("SELECT MAX(version) AS version FROM _sqlx_migrations WHERE success")
            .fetch_one(&store.pool)
            .await
            .and_then(|row| row.try_get::<Option<i64>, _>("version"))
            .map_err(|_| StoreError::Schema { applied: 0, needed })?
            .unwrap_or(0);
        if applied < needed {
            return Err(StoreError::Schema { applied, needed });
        }
        Ok(store)
    }

    /// Brings the schema up to date (idempotent; PostgreSQL serialises
    /// concurrent runs with a lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    async fn pool(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            let (file, query) = path.split_once('?').unwrap_or((path, ""));
            if let Some(folder) = Path::new(file).parent().filter(|f| !f.as_os_str().is_empty()) {
                std::fs::create_dir_all(folder)
                    .map_err(|source| StoreError::Folder { path: file.to_owned(), source })?;
            }
            let query = if query.is_empty() { "mode=rwc".to_owned() } else { query.to_owned() };
            (Backend::Sqlite, format!("sqlite://{file}?{query}"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
            return Err(StoreError::UnsupportedUrl(scheme.chars().take(20).collect()));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL: readers and the writer do not block each other;
                        // NORMAL is durable across process crashes in WAL mode
                        // (the read model can be rebuilt from the log anyway).
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *connection).await?;
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *connection).await?;
                        sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *connection).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Self { pool, backend })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Joins the projector deployment `name` on a connection of its own,
    /// to lease partitions (PostgreSQL only: see [`PartitionLeases`]).
    pub async fn join_leases(&self, name: &str) -> Result<PartitionLeases, StoreError> {
        if self.backend != Backend::Postgres {
            return Err(StoreError::NeedsPostgres("partition leases (several projector processes)"));
        }
        // Detached: the locks live as long as this connection, not the pool's.
        let connection = self.pool.acquire().await?.detach();
        PartitionLeases::join(connection, name).await
    }

    /// Closes every connection (waits for checked-out ones).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

// === impl ReadStore: queries (read-service) ===

// Column lists as macros, so that queries stay literal (`concat!`) strings.
macro_rules! account_columns {
    () => {
        "account_id, owner, balance, status, version, position, opened_at_us, updated_at_us"
    };
}
macro_rules! history_columns {
    () => {
        "account_id, version, position, kind, amount, balance_after, occurred_at_us"
    };
}

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

// === impl ReadStore: writes (projector) ===

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
                     h.occurred_at_us FROM ids JOIN account_history h ON h.account_id = ids.id \
                     AND h.version = (SELECT MAX(m.version) FROM account_history m WHERE m.account_id = ids.id)"
                ),
                Backend::Postgres => format!(
                    "SELECT h.account_id, h.version, h.position, h.kind, h.amount, h.balance_after, \
                     h.occurred_at_us FROM (VALUES {ids}) AS ids (id) CROSS JOIN LATERAL \
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
                 opened_at_us = excluded.opened_at_us, updated_at_us = excluded.updated_at_us",
                account_columns!(),
                placeholders(self.backend, chunk.len(), 8)
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
                    .bind(row.updated_at_us);
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
                placeholders(self.backend, chunk.len(), 7)
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
                    .bind(row.occurred_at_us);
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

/// Rows per multi-row statement: well under SQLite's 32,766 parameters.
const ROWS_PER_STATEMENT: usize = 500;

/// The `n`th (from 1) bind parameter of a statement. SQLite gets anonymous
/// `?`: it resolves `$n` by name, and the driver asks for every parameter's
/// name, a linear search each, so a statement of thousands of `$n`
/// parameters costs quadratic time (it was 16 % of the projector's
/// instructions in a catch-up, measured with callgrind).
fn parameter(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => "?".to_owned(),
        Backend::Postgres => format!("${n}"),
    }
}

/// `$1, $2, $3` (or `?, ?, ?`) for `count` values.
fn list_placeholders(backend: Backend, count: usize) -> String {
    (1..=count).map(|n| parameter(backend, n)).collect::<Vec<_>>().join(", ")
}

/// `($1, $2), ($3, $4)` (or `(?, ?), (?, ?)`) for `rows` rows of `columns`
/// columns.
fn placeholders(backend: Backend, rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let cells: Vec<String> = (1..=columns).map(|column| parameter(backend, row * columns + column)).collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `SELECT`s the summary rows of `account_ids`, `ROWS_PER_STATEMENT` at a
/// time.
async fn select_accounts(
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

async fn read_progress<'e, E>(executor: E) -> Result<Progress, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query("SELECT projection, partition_index, position FROM projection_checkpoints")
        .fetch_all(executor)
        .await?;
    let mut progress = Progress::default();
    for row in rows {
        let name: String = row.try_get("projection")?;
        let partition = usize::try_from(row.try_get::<i32, _>("partition_index")?)
            .map_err(|_| StoreError::Corrupt("a negative partition index".into()))?;
        if progress.partitions.len() <= partition {
            progress.partitions.resize(partition + 1, Checkpoints::default());
        }
        if let Ok(projection) = name.parse::<Projection>() {
            progress.partitions[partition].set(projection, to_u64(row.try_get("position")?));
        }
    }
    Ok(progress)
}

fn account_row(row: &AnyRow) -> Result<AccountRow, StoreError> {
    Ok(AccountRow {
        account_id: row.try_get("account_id")?,
        owner: row.try_get("owner")?,
        balance: row.try_get("balance")?,
        status: row.try_get::<String, _>("status")?.parse()?,
        version: to_u64(row.try_get("version")?),
        position: to_u64(row.try_get("position")?),
        opened_at_us: row.try_get("opened_at_us")?,
        updated_at_us: row.try_get("updated_at_us")?,
    })
}

fn history_row(row: &AnyRow) -> Result<HistoryRow, StoreError> {
    Ok(HistoryRow {
        account_id: row.try_get("account_id")?,
        version: to_u64(row.try_get("version")?),
        position: to_u64(row.try_get("position")?),
        kind: row.try_get::<String, _>("kind")?.parse()?,
        amount: row.try_get("amount")?,
        balance_after: row.try_get("balance_after")?,
        occurred_at_us: row.try_get("occurred_at_us")?,
    })
}

// Versions and positions are u64 in the contract and BIGINT in SQL; they
// stay far below 2^63 (a stream sequence would need 292 years at 1G/s).
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(placeholders(Backend::Postgres, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
        assert_eq!(list_placeholders(Backend::Postgres, 3), "$1, $2, $3");
    }

    #[test]
    fn partitions_are_stable_and_spread_accounts() {
        // Part of the stored layout: these values must never change. FNV-1a
        // of "a" is 0xe40c292c, of "b" 0xe70c2de5 (the published vectors).
        assert_eq!(partition_of("anything", 1), 0);
        assert_eq!(partition_of("anything", 0), 0);
        assert_eq!([partition_of("a", 4), partition_of("b", 4), partition_of("acc-1", 16)], [0, 1, 12]);
        let mut counts = [0; 4];
        for n in 0..4000 {
            counts[partition_of(&format!("acc-{n}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn progress_of_an_account_is_its_partitions_and_of_all_the_lowest() {
        let at = |position| Checkpoints { account_summary: position, account_history: position };
        let progress = Progress { partitions: vec![at(10), at(7), at(12), at(9)] };
        let id = (0..).map(|n| format!("acc-{n}")).find(|id| partition_of(id, 4) == 2).unwrap_or_default();
        assert_eq!(progress.of_account(Projection::AccountSummary, &id), 12);
        assert_eq!(progress.of_all(Projection::AccountHistory), 7);
        assert!(!progress.is_empty());
        assert_eq!(Progress::default().of_all(Projection::AccountSummary), 0);
    }

    #[test]
    fn projection_names_round_trip() {
        for projection in Projection::ALL {
            assert_eq!(projection.name().parse::<Projection>(), Ok(projection));
        }
        assert!("nope".parse::<Projection>().is_err());
    }
}
