//! The write side's domain: the account aggregate and the validated values
//! its commands are made of. Pure: no I/O, no protobuf, no clock.

mod account;
mod values;

pub use account::{Account, AccountStatus, Command, DomainError};
pub use shared::events::AccountEvent;
pub use values::{AccountId, Amount, CommandId, Owner, ValidationError};
