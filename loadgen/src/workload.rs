//! What to send next: an operation and an account. Pure and seeded, so a
//! run's sequence of choices is reproducible.

use rand::{Rng, SeedableRng, rngs::SmallRng};
use rand_distr::{Distribution as _, Zipf};

use crate::config::{Config, Distribution, Workload};

/// The operations loadgen sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    OpenAccount,
    DepositFunds,
    WithdrawFunds,
    GetAccount,
    GetAccountHistory,
    /// Not sent by itself: a command's acknowledgement until a
    /// `min_position` query sees it (`--measure-lag`).
    Visible,
}

impl Operation {
    /// The RPC's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpenAccount => "OpenAccount",
            Self::DepositFunds => "DepositFunds",
            Self::WithdrawFunds => "WithdrawFunds",
            Self::GetAccount => "GetAccount",
            Self::GetAccountHistory => "GetAccountHistory",
            Self::Visible => "Visible",
        }
    }
}

/// Picks operations and accounts for one worker.
pub struct Picker {
    rng: SmallRng,
    workload: Workload,
    read_ratio: f64,
    withdraw_ratio: f64,
    history_ratio: f64,
    accounts: u32,
    zipf: Option<Zipf<f64>>,
}

impl Picker {
    /// A picker for `config`, seeded with `seed` (one per worker).
    pub fn new(config: &Config, seed: u64) -> Self {
        let zipf = match config.distribution {
            Distribution::Uniform => None,
            Distribution::Zipf => Zipf::new(f64::from(config.accounts.max(1)), config.zipf_exponent).ok(),
        };
        Self {
            rng: SmallRng::seed_from_u64(seed),
            workload: config.workload,
            read_ratio: config.read_ratio.clamp(0.0, 1.0),
            withdraw_ratio: config.withdraw_ratio.clamp(0.0, 1.0),
            history_ratio: config.history_ratio.clamp(0.0, 1.0),
            accounts: config.accounts.max(1),
            zipf,
        }
    }

    /// The next operation and the account (index) it targets.
    pub fn pick(&mut self) -> (Operation, u32) {
        let read = match self.workload {
            Workload::Write => false,
            Workload::Read => true,
            Workload::Mixed => self.rng.random_bool(self.read_ratio),
        };
        let operation = if read {
            if self.rng.random_bool(self.history_ratio) { Operation::GetAccountHistory } else { Operation::GetAccount }
        } else if self.rng.random_bool(self.withdraw_ratio) {
            Operation::WithdrawFunds
        } else {
            Operation::DepositFunds
        };
        let account = match &self.zipf {
            // Zipf yields 1..=n, the hottest first.
            Some(zipf) => (zipf.sample(&mut self.rng) as u32).clamp(1, self.accounts) - 1,
            None => self.rng.random_range(0..self.accounts),
        };
        (operation, account)
    }
}

/// Account `index`'s id.
pub fn account_id(index: u32) -> String {
    format!("loadgen-{index}")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config(args: &[&str]) -> Config {
        Config::parse_from([&["loadgen"], args].concat())
    }

    #[test]
    fn workloads_send_only_their_kind_of_operation() {
        let mut writes = Picker::new(&config(&["write"]), 1);
        let mut reads = Picker::new(&config(&["read"]), 1);
        for _ in 0..1_000 {
            assert!(matches!(writes.pick().0, Operation::DepositFunds | Operation::WithdrawFunds));
            assert!(matches!(reads.pick().0, Operation::GetAccount | Operation::GetAccountHistory));
        }
    }

    #[test]
    fn zipf_makes_hot_accounts_and_stays_in_range() {
        let mut picker = Picker::new(&config(&["mixed", "--accounts", "100"]), 7);
        let mut hits = [0u32; 100];
        for _ in 0..10_000 {
            hits[picker.pick().1 as usize] += 1;
        }
        assert!(hits[0] > 10 * hits[50].max(1), "account 0 is hot: {} vs {}", hits[0], hits[50]);
        let mut uniform = Picker::new(&config(&["mixed", "--accounts", "100", "--distribution", "uniform"]), 7);
        let mut hits = [0u32; 100];
        for _ in 0..10_000 {
            hits[uniform.pick().1 as usize] += 1;
        }
        assert!(hits.iter().all(|h| *h > 40 && *h < 200), "{hits:?}");
    }

    #[test]
    fn the_operation_mix_is_configurable() {
        let mut deposits = Picker::new(&config(&["write", "--withdraw-ratio", "0"]), 5);
        assert!((0..1_000).all(|_| deposits.pick().0 == Operation::DepositFunds));
        let mut lookups = Picker::new(&config(&["read", "--history-ratio", "0"]), 5);
        assert!((0..1_000).all(|_| lookups.pick().0 == Operation::GetAccount));
    }

    #[test]
    fn the_read_ratio_is_honoured() {
        let mut picker = Picker::new(&config(&["mixed", "--read-ratio", "0.8"]), 3);
        let reads = (0..10_000)
            .filter(|_| matches!(picker.pick().0, Operation::GetAccount | Operation::GetAccountHistory))
            .count();
        assert!((7_500..8_500).contains(&reads), "{reads}");
    }
}
