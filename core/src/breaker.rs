//! Circuit breakers: stop hammering a dependency that keeps failing.
//!
//! A [`CircuitBreaker`] is closed while calls succeed. After
//! `failure_threshold` failures within `window` it opens: callers are
//! refused at once, without calling the dependency. After `cool_down` it is
//! half-open: one trial call goes through; a success closes it, a failure
//! opens it again for another cool-down.
//!
//! Projection and saga runners keep one breaker per handler (named after
//! it) in a [`CircuitBreakerRegistry`] and count the handler's
//! [`Dependency`](crate::handler::FailureKind::Dependency) failures on it: while it is
//! open the handler pauses instead of burning events into the dead-letter
//! queue. Application code can protect any outbound call with a named
//! breaker from the same registry ([`CircuitBreaker::call`]).
//!
//! Every state change is logged (`tracing`) and exported as the gauge
//! [`CIRCUIT_BREAKER_STATE`](crate::metrics::CIRCUIT_BREAKER_STATE)
//! (0 closed, 1 half-open, 2 open).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics as m;

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    /// Failures within `window` that open the breaker (at least 1).
    pub failure_threshold: u32,
    /// The sliding window failures are counted in.
    #[serde(with = "secs_f64")]
    pub window: Duration,
    /// How long the breaker stays open before letting a trial call through.
    #[serde(with = "secs_f64")]
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    /// 5 failures within 60 s open the breaker for 30 s.
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(30),
        }
    }
}

impl BreakerConfig {
    /// Sets the failure threshold (0 is taken as 1).
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// Sets the counting window.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets the cool-down.
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.cool_down = cool_down;
        self
    }
}

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// One trial call goes through; its outcome closes or reopens the breaker.
    HalfOpen,
    /// Calls are refused until the cool-down ends.
    Open,
}

impl BreakerState {
    /// The value of the state gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    /// The state's name as used in logs and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

/// A call refused because the breaker is open (or its half-open trial is
/// already under way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker `{name}` is open: the dependency failed repeatedly; calls resume with a trial in {}", fmt_wait(*.retry_after))]
pub struct BreakerOpen {
    /// The breaker's name.
    pub name: String,
    /// How long until a trial call is allowed.
    pub retry_after: Duration,
}

fn fmt_wait(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The error of [`CircuitBreaker::call`].
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker refused the call; the dependency was not called.
    #[error(transparent)]
    Open(BreakerOpen),
    /// The call was made and failed (and was counted).
    #[error(transparent)]
    Failed(E),
}

/// One circuit breaker. Cheap to share (`Arc` it, or get it from a
/// [`CircuitBreakerRegistry`]).
///
/// ```
/// use std::time::Duration;
/// use annals::{breaker::BreakerConfig, breaker::BreakerState, breaker::CircuitBreaker};
///
/// let breaker = CircuitBreaker::new("mailer", BreakerConfig::default()
///     .failure_threshold(2)
///     .cool_down(Duration::from_millis(20)));
/// breaker.record_failure();
/// breaker.record_failure();
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(breaker.try_acquire().is_err()); // refused without calling
/// std::thread::sleep(Duration::from_millis(25));
/// assert_eq!(breaker.state(), BreakerState::HalfOpen);
/// breaker.try_acquire()?; // the trial
/// breaker.record_success();
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// # Ok::<(), annals::breaker::BreakerOpen>(())
/// ```
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: VecDeque<Instant>,
    opened_at: Option<Instant>,
    trial_in_flight: bool,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let breaker = CircuitBreaker {
            name: name.into(),
            config,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: VecDeque::new(),
                opened_at: None,
                trial_in_flight: false,
            }),
        };
        breaker.export(BreakerState::Closed);
        breaker
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // every update below leaves Inner consistent, so a poisoned lock is usable
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state (an open breaker whose cool-down has passed reports
    /// half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        inner.state
    }

    /// How long until an open breaker lets a trial through (zero when it is
    /// not open).
    pub fn retry_after(&self) -> Duration {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        self.remaining(&inner)
    }

    fn remaining(&self, inner: &Inner) -> Duration {
        match (inner.state, inner.opened_at) {
            (BreakerState::Open, Some(at)) => self.config.cool_down.saturating_sub(at.elapsed()),
            // a half-open breaker with its trial in flight: ask again soon
            (BreakerState::HalfOpen, _) if inner.trial_in_flight => {
                self.config.cool_down.min(Duration::from_millis(100))
            }
            _ => Duration::ZERO,
        }
    }

    /// Asks to make a call: `Ok` when closed, or when half-open and no
    /// other trial is under way (this call is then the trial); otherwise
    /// [`BreakerOpen`]. Report the call's outcome with
    /// [`record_success`](Self::record_success) or
    /// [`record_failure`](Self::record_failure).
    pub fn try_acquire(&self) -> Result<(), BreakerOpen> {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        match inner.state {
            BreakerState::Closed => Ok(()),
            BreakerState::HalfOpen if !inner.trial_in_flight => {
                inner.trial_in_flight = true;
                Ok(())
            }
            _ => Err(BreakerOpen {
                name: self.name.clone(),
                retry_after: self.remaining(&inner),
            }),
        }
    }

    /// Records a successful call: closes a half-open breaker.
    pub fn record_success(&self) {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        inner.trial_in_flight = false;
        if inner.state != BreakerState::Closed {
            inner.failures.clear();
            inner.opened_at = None;
            self.transition(&mut inner, BreakerState::Closed);
        }
    }

    /// Ends a call without a verdict on the dependency (it failed for a
    /// reason of its own): a half-open breaker lets the next trial through.
    pub fn release(&self) {
        self.lock().trial_in_flight = false;
    }

    /// Records a failed call: opens the breaker when the threshold is
    /// reached within the window, or reopens a half-open one.
    pub fn record_failure(&self) {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        let now = Instant::now();
        inner.trial_in_flight = false;
        match inner.state {
            BreakerState::HalfOpen => {
                inner.opened_at = Some(now);
                self.transition(&mut inner, BreakerState::Open);
            }
            BreakerState::Open => {
                // a call that started before the breaker opened
                inner.opened_at = Some(now);
            }
            BreakerState::Closed => {
                inner.failures.push_back(now);
                let window = self.config.window;
                while inner
                    .failures
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > window)
                {
                    inner.failures.pop_front();
                }
                if inner.failures.len() >= self.config.failure_threshold.max(1) as usize {
                    inner.failures.clear();
                    inner.opened_at = Some(now);
                    self.transition(&mut inner, BreakerState::Open);
                }
            }
        }
    }

    /// Runs `call` through the breaker: refused at once while open, its
    /// outcome recorded otherwise.
    pub async fn call<T, E, Fut>(&self, call: impl FnOnce() -> Fut) -> Result<T, BreakerError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        self.try_acquire().map_err(BreakerError::Open)?;
        match call().await {
            Ok(v) => {
                self.record_success();
                Ok(v)
            }
            Err(e) => {
                self.record_failure();
                Err(BreakerError::Failed(e))
            }
        }
    }

    /// Open → half-open once the cool-down has passed.
    fn refresh(&self, inner: &mut Inner) {
        if inner.state == BreakerState::Open
            && inner
                .opened_at
                .is_some_and(|at| at.elapsed() >= self.config.cool_down)
        {
            inner.trial_in_flight = false;
            self.transition(inner, BreakerState::HalfOpen);
        }
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        match to {
            BreakerState::Open => tracing::warn!(
                breaker = %self.name,
                from = from.as_str(),
                cool_down_s = self.config.cool_down.as_secs_f64(),
                "circuit breaker opened: calls are refused until the cool-down ends"
            ),
            BreakerState::HalfOpen => tracing::info!(
                breaker = %self.name,
                "circuit breaker half-open: letting one trial call through"
            ),
            BreakerState::Closed => tracing::info!(
                breaker = %self.name,
                from = from.as_str(),
                "circuit breaker closed: the dependency recovered"
            ),
        }
        metrics::counter!(m::CIRCUIT_BREAKER_TRANSITIONS_TOTAL, "breaker" => self.name.clone(), "to" => to.as_str())
            .increment(1);
        self.export(to);
    }

    fn export(&self, state: BreakerState) {
        metrics::gauge!(m::CIRCUIT_BREAKER_STATE, "breaker" => self.name.clone())
            .set(state.gauge_value());
    }
}

/// Named circuit breakers, created on first use with a default
/// configuration (or one set per name). Cloning shares the registry.
///
/// Breakers live in memory: a restarted process starts with every breaker
/// closed.
#[derive(Debug, Clone, Default)]
pub struct CircuitBreakerRegistry {
    inner: Arc<Mutex<RegistryInner>>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    default: BreakerConfig,
    configs: BTreeMap<String, BreakerConfig>,
    breakers: BTreeMap<String, Arc<CircuitBreaker>>,
}

impl CircuitBreakerRegistry {
    /// An empty registry whose breakers use [`BreakerConfig::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry with another default configuration.
    pub fn with_default(config: BreakerConfig) -> Self {
        let registry = Self::default();
        registry.lock().default = config;
        registry
    }

    fn lock(&self) -> MutexGuard<'_, RegistryInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the configuration of one breaker (replacing it if it exists:
    /// the new one starts closed).
    pub fn configure(&self, name: &str, config: BreakerConfig) {
        let mut inner = self.lock();
        inner.configs.insert(name.to_owned(), config.clone());
        if inner.breakers.contains_key(name) {
            inner
                .breakers
                .insert(name.to_owned(), Arc::new(CircuitBreaker::new(name, config)));
        }
    }

    /// The breaker with this name, created closed on first use.
    pub fn get(&self, name: &str) -> Arc<CircuitBreaker> {
        let mut inner = self.lock();
        if let Some(b) = inner.breakers.get(name) {
            return b.clone();
        }
        let config = inner
            .configs
            .get(name)
            .cloned()
            .unwrap_or_else(|| inner.default.clone());
        let breaker = Arc::new(CircuitBreaker::new(name, config));
        inner.breakers.insert(name.to_owned(), breaker.clone());
        breaker
    }

    /// Every breaker created so far with its state, by name.
    pub fn states(&self) -> std::collections::BTreeMap<String, BreakerState> {
        let breakers: Vec<Arc<CircuitBreaker>> = self.lock().breakers.values().cloned().collect();
        breakers
            .into_iter()
            .map(|b| (b.name().to_owned(), b.state()))
            .collect()
    }
}

mod secs_f64 {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(threshold: u32) -> CircuitBreaker {
        CircuitBreaker::new(
            "t",
            BreakerConfig::default()
                .failure_threshold(threshold)
                .cool_down(Duration::from_millis(30)),
        )
    }

    #[test]
    fn opens_after_threshold_failures_and_refuses_calls() {
        let b = quick(3);
        b.record_failure();
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        let refused = b.try_acquire().expect_err("open");
        assert!(refused.retry_after <= Duration::from_millis(30));
        assert!(refused.to_string().contains("circuit breaker `t` is open"));
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let b = CircuitBreaker::new(
            "w",
            BreakerConfig::default()
                .failure_threshold(2)
                .window(Duration::from_millis(20)),
        );
        b.record_failure();
        std::thread::sleep(Duration::from_millis(30));
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Closed);
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn half_open_lets_one_trial_through_and_a_failure_reopens() {
        let b = quick(1);
        b.record_failure();
        std::thread::sleep(Duration::from_millis(35));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.try_acquire().expect("trial");
        assert!(b.try_acquire().is_err(), "only one trial at a time");
        b.record_failure();
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(35));
        b.try_acquire().expect("second trial");
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().expect("closed again");
    }

    #[tokio::test]
    async fn call_does_not_call_while_open() {
        let b = quick(2);
        let mut calls = 0;
        for _ in 0..5 {
            let r: Result<(), BreakerError<&str>> = b
                .call(|| {
                    calls += 1;
                    async { Err("down") }
                })
                .await;
            assert!(r.is_err());
        }
        assert_eq!(calls, 2, "the breaker opened after two failures");
    }

    #[test]
    fn registry_shares_breakers_by_name() {
        let r = CircuitBreakerRegistry::new();
        r.configure("a", BreakerConfig::default().failure_threshold(1));
        r.get("a").record_failure();
        assert_eq!(r.get("a").state(), BreakerState::Open);
        assert_eq!(r.get("b").state(), BreakerState::Closed);
        let states = r.states();
        assert_eq!(states["a"], BreakerState::Open);
        assert_eq!(states["b"], BreakerState::Closed);
        assert_eq!(states.len(), 2);
    }
}
