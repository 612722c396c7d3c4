//! SQL helpers: placeholders that suit each store, and the integer types
//! of the contract against SQL's.

use crate::Backend;

/// Rows per multi-row statement: well under SQLite's 32,766 parameters.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

/// The `n`th (from 1) bind parameter of a statement. SQLite gets anonymous
/// `?`: it resolves `$n` by name, and the driver asks for every parameter's
/// name, a linear search each, so a statement of thousands of `$n`
/// parameters costs quadratic time (it was 16 % of the projector's
/// instructions in a catch-up, measured with callgrind).
pub(crate) fn parameter(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => "?".to_owned(),
        Backend::Postgres => format!("${n}"),
    }
}

/// `$1, $2, $3` (or `?, ?, ?`) for `count` values.
pub(crate) fn list_placeholders(backend: Backend, count: usize) -> String {
    (1..=count).map(|n| parameter(backend, n)).collect::<Vec<_>>().join(", ")
}

/// `($1, $2), ($3, $4)` (or `(?, ?), (?, ?)`) for `rows` rows of `columns`
/// columns.
pub(crate) fn placeholders(backend: Backend, rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|row| {
            let cells: Vec<String> = (1..=columns).map(|column| parameter(backend, row * columns + column)).collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

// Versions and positions are u64 in the contract and BIGINT in SQL; they
// stay far below 2^63 (a stream sequence would need 292 years at 1G/s).
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
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
}
