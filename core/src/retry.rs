//! Retries with exponential backoff and jitter.
//!
//! One [`RetryPolicy`] type configures every retry annals does on a user's
//! behalf: projection handlers, saga commands, outbound calls such as the
//! HTTP embedder. It is plain data (`Clone`, `Serialize`), so it can live in
//! an application's configuration.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often and how patiently to retry a failing operation.
///
/// The delay before attempt `n + 1` (after `n` failures) is
/// `initial_delay * multiplier^(n-1)`, capped at `max_delay`, then reduced by
/// a random fraction of up to `jitter` so that many handlers failing at once
/// do not retry in lockstep.
///
/// ```
/// use std::time::Duration;
/// use annals::RetryPolicy;
///
/// let policy = RetryPolicy::new(4)
///     .initial_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(1))
///     .jitter(0.0);
/// assert_eq!(policy.delay_after(1), Duration::from_millis(100));
/// assert_eq!(policy.delay_after(2), Duration::from_millis(200));
/// assert_eq!(policy.delay_after(3), Duration::from_millis(400));
/// assert_eq!(policy.delay_after(9), Duration::from_secs(1)); // capped
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (at least 1).
    pub max_attempts: u32,
    /// The delay after the first failure.
    #[serde(with = "duration_ms")]
    pub initial_delay: Duration,
    /// The longest delay between two attempts.
    #[serde(with = "duration_ms")]
    pub max_delay: Duration,
    /// How much the delay grows after each failure (at least 1).
    pub multiplier: f64,
    /// The largest random fraction taken off each delay, from 0 (none) to 1.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 5 attempts, 100 ms doubling up to 30 s, 20 % jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The default policy with `max_attempts` attempts in all (0 is taken as 1).
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..Self::default()
        }
    }

    /// One attempt, no retries.
    pub fn no_retries() -> Self {
        Self::new(1)
    }

    /// Sets the delay after the first failure.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// Sets the longest delay.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the growth factor (values below 1 are taken as 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets the jitter fraction (clamped to 0..=1).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Attempts in all (at least 1, whatever the field says).
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// Whether another attempt is allowed after `failures` failed ones.
    pub fn allows_retry_after(&self, failures: u32) -> bool {
        failures < self.attempts()
    }

    /// The delay before the next attempt after `failures` failed ones
    /// (`failures >= 1`), jitter included.
    pub fn delay_after(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(1_000) as i32;
        let multiplier = if self.multiplier.is_finite() {
            self.multiplier.max(1.0)
        } else {
            1.0
        };
        let cap = self.max_delay.as_secs_f64();
        let base = (self.initial_delay.as_secs_f64() * multiplier.powi(exponent)).min(cap);
        let base = if base.is_finite() { base.max(0.0) } else { cap };
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let factor = 1.0 - jitter * random_unit();
        Duration::from_secs_f64(base * factor)
    }

    /// Runs `operation` until it succeeds, `retryable` says an error is not
    /// worth retrying, or the attempts are used up; sleeps (Tokio) between
    /// attempts and counts each retry in
    /// [`RETRIES_TOTAL`](crate::metrics::RETRIES_TOTAL) under `handler` (a
    /// name the code chooses, not an id). Returns the last error and how many
    /// attempts were made.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use annals::RetryPolicy;
    ///
    /// let policy = RetryPolicy::new(3).initial_delay(Duration::from_millis(1));
    /// let mut calls = 0;
    /// let result: Result<u32, _> = policy
    ///     .run("doc-example", |_attempt| { calls += 1; let n = calls; async move { if n < 3 { Err("busy") } else { Ok(n) } } }, |_| true)
    ///     .await;
    /// assert_eq!(result.ok(), Some(3));
    /// # });
    /// ```
    pub async fn run<T, E, F, Fut>(
        &self,
        handler: &str,
        operation: F,
        retryable: impl Fn(&E) -> bool,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_with_hints(handler, operation, retryable, |_| None)
            .await
    }

    /// [`run`](Self::run), honouring a delay the failure asks for (an HTTP
    /// `Retry-After`, say): `hint` reads it from the error, and the next
    /// attempt waits for the longer of it and the backoff. A hint is capped
    /// at [`max_delay`](Self::max_delay), so a server cannot stall the
    /// caller for longer than the policy allows.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use std::time::{Duration, Instant};
    /// use annals::RetryPolicy;
    ///
    /// let policy = RetryPolicy::new(2).initial_delay(Duration::from_millis(1));
    /// let started = Instant::now();
    /// let mut calls = 0;
    /// let result: Result<(), _> = policy
    ///     .run_with_hints(
    ///         "doc-example",
    ///         |_| { calls += 1; let first = calls == 1; async move { if first { Err(Duration::from_millis(50)) } else { Ok(()) } } },
    ///         |_| true,
    ///         |wait: &Duration| Some(*wait),
    ///     )
    ///     .await;
    /// assert!(result.is_ok());
    /// assert!(started.elapsed() >= Duration::from_millis(50));
    /// # });
    /// ```
    pub async fn run_with_hints<T, E, F, Fut>(
        &self,
        handler: &str,
        mut operation: F,
        retryable: impl Fn(&E) -> bool,
        hint: impl Fn(&E) -> Option<Duration>,
    ) -> Result<T, RetryError<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match operation(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if !retryable(&e) || !self.allows_retry_after(attempt) {
                        return Err(RetryError {
                            attempts: attempt,
                            last: e,
                        });
                    }
                    crate::metrics::record_retry(handler);
                    let asked = hint(&e).map_or(Duration::ZERO, |d| d.min(self.max_delay));
                    tokio::time::sleep(self.delay_after(attempt).max(asked)).await;
                }
            }
        }
    }
}

/// The error of [`RetryPolicy::run`]: the last attempt's error and how many
/// attempts were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryError<E> {
    /// Attempts made, the first one included.
    pub attempts: u32,
    /// The last attempt's error.
    pub last: E,
}

impl<E: std::fmt::Display> std::fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "failed after {} attempt(s): {}",
            self.attempts, self.last
        )
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.last)
    }
}

/// A uniform random number in `[0, 1)` (splitmix64 over a process-wide
/// counter seeded from the clock): good enough to spread retries, with no
/// dependency.
fn random_unit() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut seed = STATE.load(Ordering::Relaxed);
    if seed == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        seed = nanos | 1;
        STATE.store(seed, Ordering::Relaxed);
    }
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u128::from(u64::MAX)) as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let p = RetryPolicy::new(10)
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50))
            .jitter(0.0);
        let d: Vec<u128> = (1..=5).map(|n| p.delay_after(n).as_millis()).collect();
        assert_eq!(d, vec![10, 20, 40, 50, 50]);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p = RetryPolicy::new(3)
            .initial_delay(Duration::from_millis(1000))
            .jitter(0.5);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = p.delay_after(1).as_millis();
            assert!((500..=1000).contains(&d), "{d}");
            seen.insert(d);
        }
        assert!(seen.len() > 10, "jitter should spread delays: {seen:?}");
    }

    #[test]
    fn absurd_settings_do_not_panic() {
        let p = RetryPolicy {
            max_attempts: 0,
            initial_delay: Duration::from_secs(u64::MAX / 4),
            max_delay: Duration::from_secs(3),
            multiplier: f64::NAN,
            jitter: f64::INFINITY,
        };
        assert_eq!(p.attempts(), 1);
        assert!(p.delay_after(u32::MAX) <= Duration::from_secs(3));
    }

    #[tokio::test]
    async fn run_stops_at_the_limit_and_on_unretryable_errors() {
        let p = RetryPolicy::new(3).initial_delay(Duration::from_millis(1));
        let mut calls = 0;
        let r: Result<(), _> = p
            .run(
                "test",
                |_| {
                    calls += 1;
                    async { Err::<(), _>("down") }
                },
                |_| true,
            )
            .await;
        assert_eq!(
            r,
            Err(RetryError {
                attempts: 3,
                last: "down"
            })
        );
        assert_eq!(calls, 3);

        let mut calls = 0;
        let r: Result<(), _> = p
            .run(
                "test",
                |_| {
                    calls += 1;
                    async { Err::<(), _>("bad request") }
                },
                |e| *e != "bad request",
            )
            .await;
        assert_eq!(r.map_err(|e| e.attempts), Err(1));
        assert_eq!(calls, 1);
    }
}
