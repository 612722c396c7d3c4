//! Connecting to the read store: the pool, the schema's migrations (or the
//! check that they are applied), and closing.

use std::{path::Path, time::Duration};

use sqlx::{AnyPool, Row, any::AnyPoolOptions, migrate::Migrator};

use crate::{Backend, PartitionLeases, StoreError};

// `ignore_missing`: a schema migrated by a newer release (versions this one
// does not know) is still one this release can run on, because migrations
// only ever add (docs/adr/0003-expand-only-migrations-by-their-own-role.md). Without it sqlx
// refuses, and a rollback after an upgrade could not start.
static SQLITE_MIGRATIONS: Migrator = Migrator { ignore_missing: true, ..sqlx::migrate!("./migrations/sqlite") };
static POSTGRES_MIGRATIONS: Migrator = Migrator { ignore_missing: true, ..sqlx::migrate!("./migrations/postgres") };

/// A connection pool to the read store.
#[derive(Clone)]
pub struct ReadStore {
    pub(crate) pool: AnyPool,
    pub(crate) backend: Backend,
}

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
