//! Keeping credentials out of logs, spans and error messages. Settings that
//! are or may hold a secret are [`Secret`]s, whose `Debug` prints `***`;
//! URLs carry credentials (`postgres://user:password@host/db`,
//! `nats://token@host`), so any URL that is printed goes through
//! [`redact_url`] first.

use std::fmt;

/// A setting that must never be printed (a password, a key, a URL with
/// credentials). `Debug` shows `***`; [`Secret::expose`] gives the value to
/// the one place that uses it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the code that needs it (never for printing).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// `url` without its credentials: the user-info part (user, password, or a
/// token in the user position) becomes `***`. Works on comma-separated
/// lists (NATS_URL); an unparseable URL is not echoed at all, since the
/// place a credential sits in it is unknown.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(|one| redact_one(one.trim())).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if !parsed.username().is_empty() || parsed.password().is_some() {
                // Both setters fail only for URLs that cannot carry user info.
                let _ = parsed.set_username("***");
                let _ = parsed.set_password(None);
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_never_debug_printed() {
        let secret = Secret::from("hunter2".to_owned());
        assert_eq!(format!("{secret:?} {:?}", Some(&secret)), "*** Some(***)");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn credentials_never_survive() {
        assert_eq!(redact_url("postgres://cqrs:s3cret@db:5432/read_model"), "postgres://***@db:5432/read_model");
        assert_eq!(redact_url("nats://tok3n@nats:4222"), "nats://***@nats:4222");
        assert_eq!(redact_url("nats://a:p1@n1:4222, nats://a:p2@n2:4222"), "nats://***@n1:4222,nats://***@n2:4222");
        assert_eq!(redact_url("sqlite://data/read-model.db"), "sqlite://data/read-model.db");
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("mysql://u:pw@[bad"), "<unparseable URL>");
    }
}
