//! Circuit breaker: stop calling a backend that keeps failing, probe it, resume.
//!
//! * **Closed**: calls pass. `failure_threshold` consecutive backend failures open it.
//! * **Open**: calls fail at once with [`MessagingError::CircuitOpen`] without reaching the
//!   backend. After `timeout_ms` the next call moves it to half-open.
//! * **Half-open**: at most `half_open_max_calls` probe calls are in progress at once (others
//!   fail fast). `success_threshold` probe successes close it; one probe failure reopens it and
//!   restarts the timeout.
//!
//! Only errors with [`MessagingError::is_backend_failure`] count as failures: bad input, a
//! missing queue or a stale receipt prove the backend answered and never trip the breaker.
//! State lives behind one short `parking_lot` lock that is never held across an await; timers
//! use `tokio::time::Instant` so paused-time tests drive the timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::time::Instant;

use super::breaker_layer::{CircuitBreakerLayer, CircuitBreakerService};
use crate::config::CircuitBreakerConfig;
use crate::error::{MessagingError, Result};
use crate::service::MessagingService;

/// The three states of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
struct BreakerState {
    state: CircuitState,
    consecutive_failures: u32,
    half_open_successes: u32,
    half_open_in_flight: u32,
    opened_at: Option<Instant>,
    last_change: Instant,
    /// Bumped on every transition so results of calls admitted in an earlier phase are ignored.
    generation: u64,
}

/// One named breaker. Share it as `Arc<CircuitBreaker>`.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    config: CircuitBreakerConfig,
    state: Mutex<BreakerState>,
    /// Lock-free fast path for the open state: nanoseconds after `base` until which the breaker
    /// stays open, 0 when not open. Written under the lock, read without it.
    open_until: AtomicU64,
    base: Instant,
    calls: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
    times_opened: AtomicU64,
}

/// Permission to make one call; report its outcome with [`CallPermit::success`] or
/// [`CallPermit::failure`]. Dropping it unreported (cancelled call, permanent error) frees its
/// half-open slot without counting either way. `B` is how the permit holds its breaker: a
/// reference ([`CircuitBreaker::try_acquire`]) or an `Arc` for permits that outlive a borrow,
/// such as one held by a consumer stream ([`CircuitBreaker::try_acquire_owned`]).
#[must_use = "report the outcome of the call"]
pub struct CallPermit<B: Deref<Target = CircuitBreaker>> {
    breaker: B,
    generation: u64,
    half_open: bool,
    done: bool,
}

impl<B: Deref<Target = CircuitBreaker>> CallPermit<B> {
    pub fn success(mut self) {
        self.done = true;
        self.breaker
            .on_result(self.generation, self.half_open, true);
    }

    pub fn failure(mut self) {
        self.done = true;
        self.breaker
            .on_result(self.generation, self.half_open, false);
    }
}

impl<B: Deref<Target = CircuitBreaker>> Drop for CallPermit<B> {
    fn drop(&mut self) {
        if !self.done && self.half_open {
            let mut s = self.breaker.state.lock();
            if s.generation == self.generation && s.state == CircuitState::HalfOpen {
                s.half_open_in_flight = s.half_open_in_flight.saturating_sub(1);
            }
        }
    }
}

/// A point-in-time view of a breaker, for health and metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CircuitBreakerSnapshot {
    pub name: String,
    pub state: CircuitState,
    pub consecutive_failures: u32,
    /// Calls admitted (reached the backend) since creation.
    pub total_calls: u64,
    /// Admitted calls that failed with a backend failure.
    pub total_failures: u64,
    /// Calls refused while open (fast fails).
    pub total_rejected: u64,
    pub times_opened: u64,
    /// Milliseconds since the last state change.
    pub ms_in_state: u64,
}

impl CircuitBreaker {
    pub fn new(name: impl Into<String>, config: CircuitBreakerConfig) -> Self {
        CircuitBreaker {
            name: name.into(),
            config,
            state: Mutex::new(BreakerState {
                state: CircuitState::Closed,
                consecutive_failures: 0,
                half_open_successes: 0,
                half_open_in_flight: 0,
                opened_at: None,
                last_change: Instant::now(),
                generation: 0,
            }),
            open_until: AtomicU64::new(0),
            base: Instant::now(),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            times_opened: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    fn transition(&self, s: &mut BreakerState, to: CircuitState, now: Instant) {
        if s.state == to {
            return;
        }
        tracing::info!(breaker = %self.name, from = ?s.state, to = ?to, "circuit breaker state change");
        s.state = to;
        s.last_change = now;
        s.generation += 1;
        s.half_open_successes = 0;
        s.half_open_in_flight = 0;
        let open_until = match to {
            CircuitState::Open => {
                let until = now
                    .saturating_duration_since(self.base)
                    .saturating_add(self.timeout());
                u64::try_from(until.as_nanos()).unwrap_or(u64::MAX).max(1)
            }
            _ => 0,
        };
        self.open_until.store(open_until, Ordering::Release);
        match to {
            CircuitState::Open => {
                s.opened_at = Some(now);
                self.times_opened.fetch_add(1, Ordering::Relaxed);
            }
            CircuitState::Closed => {
                s.consecutive_failures = 0;
                s.opened_at = None;
            }
            CircuitState::HalfOpen => {}
        }
    }

    /// Moves an open breaker whose timeout has passed to half-open.
    fn refresh(&self, s: &mut BreakerState, now: Instant) {
        if s.state == CircuitState::Open {
            let opened = s.opened_at.unwrap_or(s.last_change);
            if now.saturating_duration_since(opened) >= self.timeout() {
                self.transition(s, CircuitState::HalfOpen, now);
            }
        }
    }

    /// The current state (an expired open state reads as half-open).
    pub fn state(&self) -> CircuitState {
        let mut s = self.state.lock();
        self.refresh(&mut s, Instant::now());
        s.state
    }

    /// Asks to make one call: a permit, or `CircuitOpen` without calling anything.
    pub fn try_acquire(&self) -> Result<CallPermit<&CircuitBreaker>> {
        let (generation, half_open) = self.admit()?;
        Ok(CallPermit {
            breaker: self,
            generation,
            half_open,
            done: false,
        })
    }

    /// [`CircuitBreaker::try_acquire`] with a permit that holds the breaker by `Arc`.
    pub fn try_acquire_owned(self: &Arc<Self>) -> Result<CallPermit<Arc<CircuitBreaker>>> {
        let (generation, half_open) = self.admit()?;
        Ok(CallPermit {
            breaker: self.clone(),
            generation,
            half_open,
            done: false,
        })
    }

    /// How long the breaker stays open before it admits a probe; zero when it is not open.
    pub fn open_for(&self) -> Duration {
        let open_until = self.open_until.load(Ordering::Acquire);
        let since_base = Instant::now().saturating_duration_since(self.base);
        Duration::from_nanos(open_until).saturating_sub(since_base)
    }

    /// Admits one call: its generation and whether it takes a half-open slot.
    fn admit(&self) -> Result<(u64, bool)> {
        let now = Instant::now();
        let open_until = self.open_until.load(Ordering::Acquire);
        if open_until != 0
            && now.saturating_duration_since(self.base).as_nanos() < open_until as u128
        {
            // Open and not yet due for a probe: refuse without touching the lock.
            return Err(self.reject());
        }
        let mut s = self.state.lock();
        self.refresh(&mut s, now);
        let half_open = match s.state {
            CircuitState::Closed => false,
            CircuitState::Open => return Err(self.reject()),
            CircuitState::HalfOpen => {
                if s.half_open_in_flight >= self.config.half_open_max_calls {
                    return Err(self.reject());
                }
                s.half_open_in_flight += 1;
                true
            }
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok((s.generation, half_open))
    }

    fn reject(&self) -> MessagingError {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        MessagingError::CircuitOpen {
            name: self.name.clone(),
        }
    }

    fn on_result(&self, generation: u64, half_open: bool, ok: bool) {
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut s = self.state.lock();
        if s.generation != generation {
            // Admitted before the last transition: its outcome says nothing about now.
            return;
        }
        match (s.state, ok) {
            (CircuitState::Closed, true) => s.consecutive_failures = 0,
            (CircuitState::Closed, false) => {
                s.consecutive_failures += 1;
                if s.consecutive_failures >= self.config.failure_threshold {
                    self.transition(&mut s, CircuitState::Open, now);
                }
            }
            (CircuitState::HalfOpen, true) => {
                if half_open {
                    s.half_open_in_flight = s.half_open_in_flight.saturating_sub(1);
                }
                s.half_open_successes += 1;
                if s.half_open_successes >= self.config.success_threshold {
                    self.transition(&mut s, CircuitState::Closed, now);
                }
            }
            (CircuitState::HalfOpen, false) => {
                s.consecutive_failures += 1;
                self.transition(&mut s, CircuitState::Open, now);
            }
            (CircuitState::Open, _) => {}
        }
    }

    /// Records a success outside a permit (the plan's API; e.g. an external probe).
    pub fn record_success(&self) {
        let generation = self.state.lock().generation;
        self.on_result(generation, false, true);
    }

    /// Records a failure outside a permit.
    pub fn record_failure(&self) {
        let generation = self.state.lock().generation;
        self.on_result(generation, false, false);
    }

    /// Runs `call` under the breaker: fails fast when open, records the outcome otherwise.
    pub async fn call<T, Fut>(&self, call: Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let permit = self.try_acquire()?;
        let result = call.await;
        match &result {
            Ok(_) => permit.success(),
            Err(e) if e.is_backend_failure() => permit.failure(),
            // Permanent errors prove the backend answered but say nothing about its health.
            Err(_) => drop(permit),
        }
        result
    }

    pub fn snapshot(&self) -> CircuitBreakerSnapshot {
        let now = Instant::now();
        let mut s = self.state.lock();
        self.refresh(&mut s, now);
        CircuitBreakerSnapshot {
            name: self.name.clone(),
            state: s.state,
            consecutive_failures: s.consecutive_failures,
            total_calls: self.calls.load(Ordering::Relaxed),
            total_failures: self.failures.load(Ordering::Relaxed),
            total_rejected: self.rejected.load(Ordering::Relaxed),
            times_opened: self.times_opened.load(Ordering::Relaxed),
            ms_in_state: now.saturating_duration_since(s.last_change).as_millis() as u64,
        }
    }
}

/// Named breakers sharing one default configuration (the plan's `CircuitBreakerManager`).
#[derive(Debug)]
pub struct CircuitBreakerManager {
    default_config: CircuitBreakerConfig,
    breakers: RwLock<BTreeMap<String, Arc<CircuitBreaker>>>,
}

/// Every breaker's snapshot, ordered by name.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ManagerSnapshot {
    pub breakers: Vec<CircuitBreakerSnapshot>,
    pub open: usize,
    pub half_open: usize,
}

impl CircuitBreakerManager {
    pub fn new(default_config: CircuitBreakerConfig) -> Self {
        CircuitBreakerManager {
            default_config,
            breakers: RwLock::new(BTreeMap::new()),
        }
    }

    /// The breaker named `name`, created with the default configuration if new.
    pub fn get_or_create(&self, name: &str) -> Arc<CircuitBreaker> {
        self.get_or_create_with(name, self.default_config.clone())
    }

    /// The breaker named `name`, created with `config` if new (an existing one keeps its own).
    pub fn get_or_create_with(
        &self,
        name: &str,
        config: CircuitBreakerConfig,
    ) -> Arc<CircuitBreaker> {
        if let Some(b) = self.breakers.read().get(name) {
            return b.clone();
        }
        self.breakers
            .write()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(CircuitBreaker::new(name, config)))
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<CircuitBreaker>> {
        self.breakers.read().get(name).cloned()
    }

    /// Wraps `inner` in the breaker named `name`.
    pub fn protect(&self, name: &str, inner: Arc<dyn MessagingService>) -> CircuitBreakerService {
        CircuitBreakerService::new(inner, self.get_or_create(name))
    }

    /// A layer guarding with the breaker named `name`.
    pub fn layer(&self, name: &str) -> CircuitBreakerLayer {
        CircuitBreakerLayer::new(self.get_or_create(name))
    }

    pub fn snapshot(&self) -> ManagerSnapshot {
        let breakers: Vec<_> = self.breakers.read().values().cloned().collect();
        let breakers: Vec<_> = breakers.iter().map(|b| b.snapshot()).collect();
        let count = |st| breakers.iter().filter(|b| b.state == st).count();
        ManagerSnapshot {
            open: count(CircuitState::Open),
            half_open: count(CircuitState::HalfOpen),
            breakers,
        }
    }
}
