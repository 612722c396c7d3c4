//! Waiting out a dependency that is not there yet (NATS, the stream, the
//! read store): exponential backoff, and "retry until it works" for the
//! connections a service cannot do without.

use std::{fmt::Display, future::Future, time::Duration};

/// Exponential backoff between attempts: 200 ms doubling up to 5 s.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(200))
    }
}

impl Backoff {
    /// How long the next [`wait`](Self::wait) sleeps.
    pub fn current(&self) -> Duration {
        self.0
    }

    /// Back to the shortest wait, after a success.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Sleeps, then lengthens the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

/// Runs `attempt` until it succeeds, logging each failure as "cannot reach
/// `what` yet". For dependencies without which the service cannot serve;
/// health stays NOT_SERVING meanwhile.
pub async fn until_ok<T, E, F, Fut>(what: &str, mut attempt: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::default();
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff.current(), "cannot reach {what} yet");
                backoff.wait().await;
            }
        }
    }
}
