//! The client's deadline, as gRPC carries it: the `grpc-timeout` request
//! header, `<1 to 8 digits><unit>` (H, M, S, m, u, n). One parser for the
//! server layer that refuses calls already past their deadline
//! ([`crate::grpc_telemetry`]) and for handlers that bound their own
//! waits by it (read-service's `min_position`).

use std::time::Duration;

/// The header's name.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// A `grpc-timeout` value, if well formed.
pub fn parse(value: &str) -> Option<Duration> {
    let digits = value.len().checked_sub(1).filter(|&n| (1..=8).contains(&n))?;
    let amount = &value[..digits];
    if !amount.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = amount.parse().ok()?;
    Some(match &value[digits..] {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_follow_the_grpc_wire_format() {
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("0n"), Some(Duration::ZERO));
        assert_eq!(parse("99999999M"), Some(Duration::from_secs(99_999_999 * 60)));
        for bad in ["", "m", "100", "123456789S", "-1S", "+1S", "1.5S", "10x", "bogus"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
