//! The account aggregate: `decide` holds every business rule, `apply` none.

use super::{AccountEvent, Amount, Owner};

/// An account's state, folded from its events: only what decisions need
/// (the holder's name is not, so the write side does not keep it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    /// How many events the account has; 0 if it was never opened.
    pub version: u64,
    /// The balance in minor units; never negative.
    pub balance: i64,
    /// Whether the account exists and accepts commands.
    pub status: AccountStatus,
}

/// Where an account is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccountStatus {
    /// No `AccountOpened` yet: the id is free.
    #[default]
    Unopened,
    /// Accepts deposits, withdrawals and closing.
    Open,
    /// Accepts nothing; the id is never reused.
    Closed,
}

/// What a client asks of an account, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Open the account for `owner`.
    Open { owner: Owner },
    /// Add `amount` to the balance.
    Deposit { amount: Amount, expected_version: Option<u64> },
    /// Take `amount` from the balance.
    Withdraw { amount: Amount, expected_version: Option<u64> },
    /// Close the account; its balance must be zero.
    Close { expected_version: Option<u64> },
}

/// Why the account refuses a command. Messages complete "account X ...".
/// The gRPC code of each variant is in `error.rs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// NOT_FOUND: the account was never opened.
    #[error("does not exist")]
    NotFound,
    /// ALREADY_EXISTS: an account with this id was opened before.
    #[error("already exists")]
    AlreadyExists,
    /// ABORTED: the client decided on a version the account has left.
    #[error("is at version {actual}, not at the expected version {expected}; re-read it and retry")]
    VersionMismatch { expected: u64, actual: u64 },
    /// FAILED_PRECONDITION: the account is closed.
    #[error("is closed")]
    Closed,
    /// FAILED_PRECONDITION: the withdrawal exceeds the balance.
    #[error("has a balance of {balance}, less than the {requested} requested")]
    InsufficientFunds { balance: i64, requested: i64 },
    /// FAILED_PRECONDITION: only an empty account can be closed.
    #[error("still has a balance of {balance}; withdraw it before closing the account")]
    NonZeroBalance { balance: i64 },
    /// FAILED_PRECONDITION: the deposit would overflow the balance.
    #[error("cannot hold more: a deposit of {amount} on a balance of {balance} exceeds the largest balance")]
    BalanceOverflow { balance: i64, amount: i64 },
}

impl Account {
    /// Decides `command` against the current state: the event it produces,
    /// or why it is refused. Every command produces exactly one event, so an
    /// accepted command is one atomic append.
    pub fn decide(&self, command: &Command) -> Result<AccountEvent, DomainError> {
        match command {
            Command::Open { owner } => match self.status {
                AccountStatus::Unopened => Ok(AccountEvent::Opened { owner: owner.clone().into_inner() }),
                AccountStatus::Open | AccountStatus::Closed => Err(DomainError::AlreadyExists),
            },
            Command::Deposit { amount, expected_version } => {
                self.ensure_open(*expected_version)?;
                let amount = amount.minor_units();
                self.balance
                    .checked_add(amount)
                    .ok_or(DomainError::BalanceOverflow { balance: self.balance, amount })?;
                Ok(AccountEvent::Deposited { amount })
            }
            Command::Withdraw { amount, expected_version } => {
                self.ensure_open(*expected_version)?;
                let amount = amount.minor_units();
                if amount > self.balance {
                    return Err(DomainError::InsufficientFunds { balance: self.balance, requested: amount });
                }
                Ok(AccountEvent::Withdrawn { amount })
            }
            Command::Close { expected_version } => {
                self.ensure_open(*expected_version)?;
                if self.balance != 0 {
                    return Err(DomainError::NonZeroBalance { balance: self.balance });
                }
                Ok(AccountEvent::Closed)
            }
        }
    }

    /// The order of checks matters: a client that decided on a stale version
    /// learns that first (ABORTED), before any rule its stale view broke.
    fn ensure_open(&self, expected_version: Option<u64>) -> Result<(), DomainError> {
        if self.status == AccountStatus::Unopened {
            return Err(DomainError::NotFound);
        }
        if let Some(expected) = expected_version
            && expected != self.version
        {
            return Err(DomainError::VersionMismatch { expected, actual: self.version });
        }
        if self.status == AccountStatus::Closed {
            return Err(DomainError::Closed);
        }
        Ok(())
    }

    /// Folds one event into the state. Events are facts: no rule is checked
    /// here (saturating arithmetic keeps a corrupt log from panicking).
    pub fn apply(&mut self, event: &AccountEvent) {
        self.version += 1;
        match event {
            AccountEvent::Opened { .. } => self.status = AccountStatus::Open,
            AccountEvent::Deposited { amount } => self.balance = self.balance.saturating_add(*amount),
            AccountEvent::Withdrawn { amount } => self.balance = self.balance.saturating_sub(*amount),
            AccountEvent::Closed => self.status = AccountStatus::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Given events, when a command, then an event or an error.

    use super::*;

    fn given(events: &[AccountEvent]) -> Account {
        let mut account = Account::default();
        for event in events {
            account.apply(event);
        }
        account
    }

    fn opened() -> AccountEvent {
        AccountEvent::Opened { owner: "Ada".into() }
    }

    fn owner() -> Owner {
        Owner::parse("Ada".into()).unwrap()
    }

    fn amount(value: i64) -> Amount {
        Amount::parse(value).unwrap()
    }

    fn deposit(value: i64) -> Command {
        Command::Deposit { amount: amount(value), expected_version: None }
    }

    fn withdraw(value: i64) -> Command {
        Command::Withdraw { amount: amount(value), expected_version: None }
    }

    #[test]
    fn opening_a_new_account_produces_version_one() {
        let account = given(&[]);
        let event = account.decide(&Command::Open { owner: owner() }).unwrap();
        assert_eq!(event, opened());
        let account = given(&[event]);
        assert_eq!((account.version, account.status, account.balance), (1, AccountStatus::Open, 0));
    }

    #[test]
    fn an_id_is_never_opened_twice_even_after_closing() {
        assert_eq!(given(&[opened()]).decide(&Command::Open { owner: owner() }), Err(DomainError::AlreadyExists));
        assert_eq!(
            given(&[opened(), AccountEvent::Closed]).decide(&Command::Open { owner: owner() }),
            Err(DomainError::AlreadyExists)
        );
    }

    #[test]
    fn commands_on_an_unopened_account_are_not_found() {
        let account = given(&[]);
        for command in [deposit(1), withdraw(1), Command::Close { expected_version: None }] {
            assert_eq!(account.decide(&command), Err(DomainError::NotFound));
        }
    }

    #[test]
    fn deposits_and_withdrawals_move_the_balance() {
        let account = given(&[opened(), AccountEvent::Deposited { amount: 100 }]);
        assert_eq!(account.decide(&deposit(50)), Ok(AccountEvent::Deposited { amount: 50 }));
        assert_eq!(account.decide(&withdraw(100)), Ok(AccountEvent::Withdrawn { amount: 100 }));
        let account =
            given(&[opened(), AccountEvent::Deposited { amount: 100 }, AccountEvent::Withdrawn { amount: 30 }]);
        assert_eq!((account.balance, account.version), (70, 3));
    }

    #[test]
    fn a_withdrawal_may_not_exceed_the_balance() {
        let account = given(&[opened(), AccountEvent::Deposited { amount: 100 }]);
        assert_eq!(
            account.decide(&withdraw(101)),
            Err(DomainError::InsufficientFunds { balance: 100, requested: 101 })
        );
    }

    #[test]
    fn a_deposit_may_not_overflow_the_balance() {
        let account = given(&[opened(), AccountEvent::Deposited { amount: i64::MAX }]);
        assert_eq!(account.decide(&deposit(1)), Err(DomainError::BalanceOverflow { balance: i64::MAX, amount: 1 }));
    }

    #[test]
    fn only_an_empty_account_can_be_closed() {
        let account = given(&[opened(), AccountEvent::Deposited { amount: 5 }]);
        assert_eq!(
            account.decide(&Command::Close { expected_version: None }),
            Err(DomainError::NonZeroBalance { balance: 5 })
        );
        let account = given(&[opened()]);
        assert_eq!(account.decide(&Command::Close { expected_version: None }), Ok(AccountEvent::Closed));
    }

    #[test]
    fn a_closed_account_accepts_nothing() {
        let account = given(&[opened(), AccountEvent::Closed]);
        for command in [deposit(1), withdraw(1), Command::Close { expected_version: None }] {
            assert_eq!(account.decide(&command), Err(DomainError::Closed));
        }
    }

    #[test]
    fn a_stale_expected_version_is_refused_before_any_rule() {
        let account = given(&[opened(), AccountEvent::Deposited { amount: 5 }]);
        let stale = Command::Withdraw { amount: amount(500), expected_version: Some(1) };
        assert_eq!(account.decide(&stale), Err(DomainError::VersionMismatch { expected: 1, actual: 2 }));
        let current = Command::Deposit { amount: amount(1), expected_version: Some(2) };
        assert_eq!(account.decide(&current), Ok(AccountEvent::Deposited { amount: 1 }));
    }
}
