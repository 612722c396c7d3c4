//! The two projections' fold functions: given the row as it is and the next
//! event, the row as it must be. Every inconsistency (an event for an
//! account that was never opened, a version out of sequence, a balance that
//! would go negative) is an error: the event is set aside, never guessed at.

use read_model::{AccountRow, AccountStatus, EventKind, HistoryRow, Provenance};
use shared::events::AccountEvent;

use super::EventRecord;

/// Why an event cannot be applied to a projection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectionError {
    /// The event's version does not follow the account's.
    #[error("version {got} does not follow the account's version {current}")]
    OutOfSequence { current: u64, got: u64 },
    /// An event other than AccountOpened for an account never opened.
    #[error("account {0} was never opened")]
    NotOpened(String),
    /// AccountOpened for an account that exists.
    #[error("account {0} is already open")]
    AlreadyOpened(String),
    /// An event after AccountClosed.
    #[error("account {0} is closed")]
    Closed(String),
    /// The balance would leave the range of a balance.
    #[error("the balance of account {0} would leave its range")]
    BalanceOutOfRange(String),
}

/// `account_summary`: the account's current state after `record`.
pub fn account_summary(current: Option<&AccountRow>, record: &EventRecord) -> Result<AccountRow, ProjectionError> {
    let account_id = &record.account_id;
    let Some(current) = current else {
        return match &record.event {
            AccountEvent::Opened { owner } if record.version == 1 => Ok(AccountRow {
                account_id: account_id.clone(),
                owner: owner.clone(),
                balance: 0,
                status: AccountStatus::Open,
                version: 1,
                position: record.position,
                opened_at_us: record.occurred_at_us,
                updated_at_us: record.occurred_at_us,
                provenance: Provenance::default(),
            }),
            AccountEvent::Opened { .. } => Err(ProjectionError::OutOfSequence { current: 0, got: record.version }),
            _ => Err(ProjectionError::NotOpened(account_id.clone())),
        };
    };
    if record.version != current.version + 1 {
        return Err(ProjectionError::OutOfSequence { current: current.version, got: record.version });
    }
    if current.status == AccountStatus::Closed {
        return Err(ProjectionError::Closed(account_id.clone()));
    }
    let mut next = current.clone();
    // Stamped by whoever writes the row (`app::Projector::apply`).
    next.provenance = Provenance::default();
    next.version = record.version;
    next.position = record.position;
    next.updated_at_us = record.occurred_at_us;
    match &record.event {
        AccountEvent::Opened { .. } => return Err(ProjectionError::AlreadyOpened(account_id.clone())),
        AccountEvent::Deposited { amount } | AccountEvent::Withdrawn { amount } => {
            next.balance = balance_after(current.balance, &record.event, *amount)
                .ok_or_else(|| ProjectionError::BalanceOutOfRange(account_id.clone()))?;
        }
        AccountEvent::Closed => next.status = AccountStatus::Closed,
    }
    Ok(next)
}

/// `account_history`: the row recording `record`, given the account's
/// previous history row.
pub fn account_history(previous: Option<&HistoryRow>, record: &EventRecord) -> Result<HistoryRow, ProjectionError> {
    let account_id = &record.account_id;
    let (current_version, balance, closed) = match previous {
        Some(row) => (row.version, row.balance_after, row.kind == EventKind::AccountClosed),
        None => (0, 0, false),
    };
    if record.version != current_version + 1 {
        return Err(ProjectionError::OutOfSequence { current: current_version, got: record.version });
    }
    if closed {
        return Err(ProjectionError::Closed(account_id.clone()));
    }
    let (kind, amount) = match &record.event {
        AccountEvent::Opened { .. } if previous.is_some() => {
            return Err(ProjectionError::AlreadyOpened(account_id.clone()));
        }
        _ if previous.is_none() && !matches!(record.event, AccountEvent::Opened { .. }) => {
            return Err(ProjectionError::NotOpened(account_id.clone()));
        }
        AccountEvent::Opened { .. } => (EventKind::AccountOpened, 0),
        AccountEvent::Deposited { amount } => (EventKind::FundsDeposited, *amount),
        AccountEvent::Withdrawn { amount } => (EventKind::FundsWithdrawn, *amount),
        AccountEvent::Closed => (EventKind::AccountClosed, 0),
    };
    let balance_after = balance_after(balance, &record.event, amount)
        .ok_or_else(|| ProjectionError::BalanceOutOfRange(account_id.clone()))?;
    Ok(HistoryRow {
        account_id: account_id.clone(),
        version: record.version,
        position: record.position,
        kind,
        amount,
        balance_after,
        occurred_at_us: record.occurred_at_us,
        command_trace: record.command_trace.clone(),
        provenance: Provenance::default(),
    })
}

/// The balance after `event`; `None` if it would overflow or go negative.
fn balance_after(balance: i64, event: &AccountEvent, amount: i64) -> Option<i64> {
    match event {
        AccountEvent::Deposited { .. } => balance.checked_add(amount),
        AccountEvent::Withdrawn { .. } => balance.checked_sub(amount).filter(|b| *b >= 0),
        AccountEvent::Opened { .. } | AccountEvent::Closed => Some(balance),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64, event: AccountEvent) -> EventRecord {
        EventRecord {
            position: 100 + version,
            account_id: "acc".into(),
            version,
            occurred_at_us: 1_000 * version as i64,
            command_trace: Some(format!("00-{:032x}-{:016x}-01", version, version)),
            event,
        }
    }

    fn opened() -> AccountEvent {
        AccountEvent::Opened { owner: "Ada".into() }
    }

    /// Folds events through both projections, as the projector does.
    fn fold(events: &[AccountEvent]) -> (Option<AccountRow>, Vec<HistoryRow>) {
        let mut summary = None;
        let mut history: Vec<HistoryRow> = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let record = record(i as u64 + 1, event.clone());
            summary = Some(account_summary(summary.as_ref(), &record).unwrap());
            history.push(account_history(history.last(), &record).unwrap());
        }
        (summary, history)
    }

    #[test]
    fn a_lifetime_of_events_gives_the_summary_and_running_balances() {
        let (summary, history) = fold(&[
            opened(),
            AccountEvent::Deposited { amount: 100 },
            AccountEvent::Withdrawn { amount: 30 },
            AccountEvent::Withdrawn { amount: 70 },
            AccountEvent::Closed,
        ]);
        let summary = summary.unwrap();
        assert_eq!((summary.balance, summary.version, summary.status), (0, 5, AccountStatus::Closed));
        assert_eq!((summary.opened_at_us, summary.updated_at_us, summary.position), (1_000, 5_000, 105));
        let balances: Vec<i64> = history.iter().map(|row| row.balance_after).collect();
        assert_eq!(balances, [0, 100, 70, 0, 0]);
        let amounts: Vec<i64> = history.iter().map(|row| row.amount).collect();
        assert_eq!(amounts, [0, 100, 30, 70, 0]);
        assert_eq!(history[2].kind, EventKind::FundsWithdrawn);
        assert_eq!(history[2].command_trace, record(3, opened()).command_trace, "each row keeps its command's trace");
    }

    #[test]
    fn events_for_an_account_never_opened_are_refused() {
        let deposit = record(1, AccountEvent::Deposited { amount: 5 });
        assert_eq!(account_summary(None, &deposit), Err(ProjectionError::NotOpened("acc".into())));
        assert_eq!(account_history(None, &deposit), Err(ProjectionError::NotOpened("acc".into())));
    }

    #[test]
    fn versions_out_of_sequence_are_refused() {
        let (summary, history) = fold(&[opened()]);
        let skipped = record(3, AccountEvent::Deposited { amount: 5 });
        assert_eq!(
            account_summary(summary.as_ref(), &skipped),
            Err(ProjectionError::OutOfSequence { current: 1, got: 3 })
        );
        assert_eq!(
            account_history(history.last(), &skipped),
            Err(ProjectionError::OutOfSequence { current: 1, got: 3 })
        );
    }

    #[test]
    fn a_second_opening_a_closed_account_and_an_overdraft_are_refused() {
        let (summary, history) = fold(&[opened()]);
        let reopen = record(2, opened());
        assert!(matches!(account_summary(summary.as_ref(), &reopen), Err(ProjectionError::AlreadyOpened(_))));
        assert!(matches!(account_history(history.last(), &reopen), Err(ProjectionError::AlreadyOpened(_))));

        let overdraft = record(2, AccountEvent::Withdrawn { amount: 1 });
        assert!(matches!(account_summary(summary.as_ref(), &overdraft), Err(ProjectionError::BalanceOutOfRange(_))));

        let (summary, history) = fold(&[opened(), AccountEvent::Closed]);
        let late = record(3, AccountEvent::Deposited { amount: 1 });
        assert!(matches!(account_summary(summary.as_ref(), &late), Err(ProjectionError::Closed(_))));
        assert!(matches!(account_history(history.last(), &late), Err(ProjectionError::Closed(_))));
    }
}
