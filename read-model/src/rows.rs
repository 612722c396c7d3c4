//! The rows of the read model as the services see them, and how they are
//! read from SQL.

use std::str::FromStr;

use sqlx::{Row, any::AnyRow};

use crate::{StoreError, sql::to_u64};

/// Whether an account accepts commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Open,
    Closed,
}

impl AccountStatus {
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn as_str(self) -> &'static str {
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

/// Where a row came from, besides the position and time of the event
/// that last changed it (which every row has): when the projector wrote
/// it, and the projection span that did. Both are empty in rows written
/// before migration 0003; the span also when it was not sampled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// When the projector wrote the row, µs since the epoch.
    pub projected_at_us: Option<i64>,
    /// The W3C `traceparent` of the `projection.<name>` span that wrote it.
    pub projection_trace: Option<String>,
}

/// One row of `account_summary`: an account's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    pub account_id: String,
    pub owner: String,
    pub balance: i64,
    pub status: AccountStatus,
    pub version: u64,
    /// The position of the event that last changed the account.
    pub position: u64,
    pub opened_at_us: i64,
    /// When that event happened.
    pub updated_at_us: i64,
    pub provenance: Provenance,
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
    /// The W3C `traceparent` of the command's PRODUCER span, as the event
    /// carried it (empty before migration 0003 or without one).
    pub command_trace: Option<String>,
    pub provenance: Provenance,
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

pub(crate) fn account_row(row: &AnyRow) -> Result<AccountRow, StoreError> {
    Ok(AccountRow {
        account_id: row.try_get("account_id")?,
        owner: row.try_get("owner")?,
        balance: row.try_get("balance")?,
        status: row.try_get::<String, _>("status")?.parse()?,
        version: to_u64(row.try_get("version")?),
        position: to_u64(row.try_get("position")?),
        opened_at_us: row.try_get("opened_at_us")?,
        updated_at_us: row.try_get("updated_at_us")?,
        provenance: provenance(row)?,
    })
}

pub(crate) fn history_row(row: &AnyRow) -> Result<HistoryRow, StoreError> {
    Ok(HistoryRow {
        account_id: row.try_get("account_id")?,
        version: to_u64(row.try_get("version")?),
        position: to_u64(row.try_get("position")?),
        kind: row.try_get::<String, _>("kind")?.parse()?,
        amount: row.try_get("amount")?,
        balance_after: row.try_get("balance_after")?,
        occurred_at_us: row.try_get("occurred_at_us")?,
        command_trace: row.try_get("command_trace")?,
        provenance: provenance(row)?,
    })
}

fn provenance(row: &AnyRow) -> Result<Provenance, StoreError> {
    Ok(Provenance {
        projected_at_us: row.try_get("projected_at_us")?,
        projection_trace: row.try_get("projection_trace")?,
    })
}
