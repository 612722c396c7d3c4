//! Which projector process projects which partition: PostgreSQL session
//! advisory locks, one per partition, held on a connection of their own.
//!
//! Why the read store's database and not NATS: a lock lives exactly as long
//! as its holder's session, so a process that dies (SIGKILL, OOM, node
//! loss) releases its partitions as soon as PostgreSQL sees the connection
//! close — no TTL to wait out, no clock — and the store that a lease guards
//! is the one place every writer must reach anyway. A lease is for
//! placement and takeover only; it does not have to fence: two writers of a
//! partition (one that lost its lease and has not noticed yet) are still
//! serialised by the partition's checkpoint row (`FOR UPDATE`, then
//! compare-and-set), so nothing is applied twice. Members hold a shared
//! lock as well, so that each can count the others and take a fair share.

use sqlx::{AnyConnection, Row};

use crate::{StoreError, progress::fnv1a};

/// The member lock's key within a namespace (partitions are 0, 1, …).
const MEMBERS: i32 = i32::MAX;

/// The leases of one projector deployment (a namespace: its consumer name).
pub struct PartitionLeases {
    connection: AnyConnection,
    namespace: i32,
}

impl PartitionLeases {
    pub(crate) async fn join(mut connection: AnyConnection, name: &str) -> Result<Self, StoreError> {
        // Keys are two int4s: (namespace, partition); positive, so that they
        // read the same in pg_locks' oid columns.
        let namespace = (fnv1a(name) & 0x7fff_ffff) as i32;
        sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
            .bind(namespace)
            .bind(MEMBERS)
            .execute(&mut connection)
            .await?;
        Ok(Self { connection, namespace })
    }

    /// How many processes of this deployment are alive (this one included).
    /// Also proves the lease connection still works: an error means this
    /// process may have lost every lease.
    pub async fn members(&mut self) -> Result<u32, StoreError> {
        let row = sqlx::query(
            // Advisory locks are per database; pg_locks shows the server's.
            "SELECT COUNT(*) AS members FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND classid = $1::int4::oid AND objid = $2::int4::oid AND objsubid = 2",
        )
        .bind(self.namespace)
        .bind(MEMBERS)
        .fetch_one(&mut self.connection)
        .await?;
        Ok(u32::try_from(row.try_get::<i64, _>("members")?).unwrap_or(1).max(1))
    }

    /// Takes `partition` if no other process holds it.
    pub async fn try_acquire(&mut self, partition: u32) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT pg_try_advisory_lock($1, $2) AS acquired")
            .bind(self.namespace)
            .bind(partition as i32)
            .fetch_one(&mut self.connection)
            .await?;
        Ok(row.try_get("acquired")?)
    }

    /// Gives `partition` up for another process to take.
    pub async fn release(&mut self, partition: u32) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_unlock($1, $2) AS released")
            .bind(self.namespace)
            .bind(partition as i32)
            .fetch_one(&mut self.connection)
            .await?;
        Ok(())
    }
}
