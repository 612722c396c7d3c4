//! How far the read model is: the projections, their checkpoints per
//! partition, and which partition an account belongs to.

use std::str::FromStr;

use sqlx::Row;

use crate::{StoreError, sql::to_u64};

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
pub(crate) fn fnv1a(text: &str) -> u32 {
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

pub(crate) async fn read_progress<'e, E>(executor: E) -> Result<Progress, StoreError>
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

#[cfg(test)]
mod tests {
    use super::*;

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
