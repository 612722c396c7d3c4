//! The read store: the read model's schema (migrations for SQLite and
//! PostgreSQL) and every query on it. The projector is its only writer
//! ([`ReadStore::begin`], [`ProjectionBatch`]); read-service only reads.
//!
//! One code path serves both stores through sqlx's `Any` driver: the SQL is
//! portable (`$N` parameters work on both), and where the stores must
//! differ the code branches on [`Backend`] (`?` placeholders in generated
//! SQLite statements, `last_histories`, the batch's locking, leases);
//! the migrations are written once per store (docs/adr/0008).
//!
//! By job: `store` (connecting, migrations, the schema check), `queries`
//! (what the read-service reads), `writes` (the projector's batches,
//! resets and re-layouts), `progress` (projections, checkpoints,
//! partitions), `leases` (which process projects which partition), `rows`
//! (the rows as the services see them) and `sql` (placeholders, integers).

// Column lists as macros, so that queries stay literal (`concat!`) strings.
macro_rules! account_columns {
    () => {
        "account_id, owner, balance, status, version, position, opened_at_us, updated_at_us, projected_at_us, \
         projection_trace"
    };
}
macro_rules! history_columns {
    () => {
        "account_id, version, position, kind, amount, balance_after, occurred_at_us, command_trace, \
         projected_at_us, projection_trace"
    };
}

mod leases;
mod progress;
mod queries;
mod rows;
mod sql;
mod store;
mod writes;

pub use leases::PartitionLeases;
pub use progress::{Checkpoints, Progress, Projection, partition_of};
pub use rows::{AccountRow, AccountStatus, DeadLetter, EventKind, HistoryRow, Provenance};
pub use store::ReadStore;
pub use writes::ProjectionBatch;

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
