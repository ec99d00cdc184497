//! The resilience stack the orchestration runs on, and how its loops ride through outages.
//!
//! [`wrap`] composes the stack over a provider in one place (retry -> circuit breaker ->
//! provider, the order `docs/resilience.md` recommends) and returns the handles the demo
//! summary and `/health` read: the breaker and the [`FaultCounters`].
//!
//! Every loop of the orchestration (pool workers, the submitters, the demo's bookkeeping, the
//! task store) treats a retryable error as "not now": it retries with a growing backoff
//! ([`OutageBackoff`], `backon`) and never ends on it. While the backend is down the breaker is
//! open, so those retries fail fast without reaching the backend; it lets one probe through
//! every `timeout_ms`. [`FaultCounters`] logs one warning when the backend goes away and one
//! line when it is back, with the count of operations retried in between: no log flood.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use parking_lot::Mutex;
use serde::Serialize;
use tasker_messaging::resilience::{
    CircuitBreaker, CircuitBreakerManager, RetryService, ServiceStack,
};
use tasker_messaging::{CircuitBreakerConfig, MessagingConfig, MessagingError, MessagingService};
use tokio::time::Instant;

/// The longest the orchestration's breaker stays open before it probes again. The library
/// default (`circuit_breaker.timeout_ms` = 30 s) would keep a run waiting up to 30 s after
/// the backend is back; a probe is one cheap call, so the orchestration probes more often.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// A failure this soon after an outage ended continues it (no new warning, no new count).
const OUTAGE_SETTLE: Duration = Duration::from_secs(3);

/// Errors the loops can classify: retryable ones are ridden through, the rest end the loop.
pub trait Transient: fmt::Display {
    fn is_transient(&self) -> bool;
}

impl Transient for MessagingError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }
}

/// What the loops saw of the backend: retries, outages and the time spent in them.
#[derive(Debug, Default)]
pub struct FaultCounters {
    retried: AtomicU64,
    outages: AtomicU64,
    state: Mutex<OutageState>,
}

#[derive(Debug, Default)]
struct OutageState {
    /// When a call last succeeded.
    last_success: Option<Instant>,
    /// Since when no call has succeeded, during an outage (None: the backend answers).
    down_since: Option<Instant>,
    /// The last outage: when it began and ended, so a failure right after it (a half-open
    /// breaker refusing all but its probe) continues it instead of starting a new one.
    last: Option<(Instant, Instant)>,
    retried_at_start: u64,
    degraded: Duration,
}

impl FaultCounters {
    pub fn new() -> Arc<Self> {
        Arc::new(FaultCounters::default())
    }

    /// A retryable failure of `what`; the caller retries after a backoff. Warns once per
    /// outage (the first failure after a success).
    pub fn failure(&self, what: &str, error: &dyn fmt::Display) {
        let retried = self.retried.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = self.state.lock();
        let now = Instant::now();
        if state.down_since.is_none() {
            match state.last {
                Some((began, ended)) if now.saturating_duration_since(ended) < OUTAGE_SETTLE => {
                    // Still settling after the last outage: the same outage goes on.
                    state.degraded = state
                        .degraded
                        .saturating_sub(ended.saturating_duration_since(began));
                    state.down_since = Some(began);
                    tracing::debug!(operation = what, %error, "unavailable again");
                }
                _ => {
                    // The outage began after the last success: a call that hangs until the
                    // pool times out reports its failure seconds after the backend went away.
                    state.down_since = Some(state.last_success.unwrap_or(now));
                    state.retried_at_start = retried - 1;
                    self.outages.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(operation = what, %error, "backend unavailable; retrying with backoff");
                }
            }
        } else {
            tracing::debug!(operation = what, %error, "still unavailable");
        }
    }

    /// A call succeeded: ends the outage if one was open (one line with its length and count).
    pub fn success(&self) {
        let mut state = self.state.lock();
        let now = Instant::now();
        state.last_success = Some(now);
        if let Some(since) = state.down_since.take() {
            let lasted = now.saturating_duration_since(since);
            state.degraded += lasted;
            let settling = state.last.is_some_and(|(began, _)| began == since);
            state.last = Some((since, now));
            let retried = self.retried.load(Ordering::Relaxed) - state.retried_at_start;
            if settling {
                tracing::debug!(?lasted, retried, "backend available again");
            } else {
                tracing::warn!(?lasted, retried, "backend available again; work resumed");
            }
        }
    }

    /// Operations the loops retried (each retry once).
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// Outages seen (a failure after a success starts one).
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    /// Time from the last success before each outage to the first success after it, including
    /// an outage still open.
    pub fn degraded(&self) -> Duration {
        let state = self.state.lock();
        state.degraded + state.down_since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

/// The backoff between retries of a loop: exponential with jitter from 50 ms, capped at 1 s,
/// unbounded in count (the loop decides when to stop).
#[derive(Clone, Debug)]
pub struct OutageBackoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for OutageBackoff {
    fn default() -> Self {
        OutageBackoff {
            min: Duration::from_millis(50),
            max: Duration::from_secs(1),
        }
    }
}

impl OutageBackoff {
    pub fn builder(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
    }

    /// A fresh sequence of delays.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send {
        self.builder().build()
    }
}

/// Waits that double from `first` up to `max` and go on at `max` (no jitter, no end): how idle
/// loops slow down while nothing happens (pool workers, the coordinator's tick).
pub fn doubling_waits(first: Duration, max: Duration) -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(max.max(first))
        .without_max_times()
        .build()
}

/// How loops retry through outages: the backoff and where they report.
#[derive(Clone, Debug)]
pub struct RideThrough {
    pub backoff: OutageBackoff,
    pub faults: Arc<FaultCounters>,
}

impl Default for RideThrough {
    fn default() -> Self {
        RideThrough {
            backoff: OutageBackoff::default(),
            faults: FaultCounters::new(),
        }
    }
}

impl RideThrough {
    /// Runs `op` until it succeeds or fails with a permanent error, retrying retryable errors
    /// with backoff; with `deadline`, gives up (returning the last error) when the next
    /// attempt would start after it.
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &'static str,
        deadline: Option<Instant>,
        op: F,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Transient,
    {
        let faults = &self.faults;
        let result = op
            .retry(self.backoff.builder())
            .sleep(tokio::time::sleep)
            .when(|e: &E| e.is_transient())
            .adjust(|_, delay| match (deadline, delay) {
                (Some(deadline), Some(d)) if Instant::now() + d > deadline => None,
                (_, d) => d,
            })
            .notify(|e: &E, _| faults.failure(what, e))
            .await;
        if result.is_ok() {
            faults.success();
        }
        result
    }
}

/// The wrapped service and the handles that observe it.
#[derive(Clone)]
pub struct Resilient {
    /// Retry -> circuit breaker -> provider.
    pub service: Arc<dyn MessagingService>,
    pub breakers: Arc<CircuitBreakerManager>,
    /// The provider's breaker (also guards the PostgreSQL task store's transactions).
    pub breaker: Arc<CircuitBreaker>,
    pub retry: Arc<RetryService>,
    pub ride: RideThrough,
}

impl fmt::Debug for Resilient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilient")
            .field("provider", &self.service.provider())
            .field("breaker", &self.breaker.snapshot())
            .field("faults", &self.ride.faults)
            .finish()
    }
}

impl Resilient {
    /// What the run rode through so far.
    pub fn report(&self) -> FaultReport {
        let breaker = self.breaker.snapshot();
        FaultReport {
            retried_operations: self.ride.faults.retried() + self.retry.layer().retries(),
            outages: self.ride.faults.outages(),
            breaker_openings: breaker.times_opened,
            breaker_rejected_calls: breaker.total_rejected,
            degraded_secs: self.ride.faults.degraded().as_secs_f64(),
        }
    }
}

/// Faults a run rode through (the demo summary's `faults`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FaultReport {
    /// Operations retried: by the retry layer inside the stack and by the loops.
    pub retried_operations: u64,
    /// Outages the loops saw (calls failing until one succeeded).
    pub outages: u64,
    /// Times the circuit breaker opened.
    pub breaker_openings: u64,
    /// Calls the open breaker refused without reaching the backend.
    pub breaker_rejected_calls: u64,
    /// Seconds from the last success before each outage to the first success after it.
    pub degraded_secs: f64,
}

/// The breaker settings the orchestration uses: the configured ones, probing at least every
/// [`MAX_PROBE_INTERVAL`].
pub fn breaker_config(config: &MessagingConfig) -> CircuitBreakerConfig {
    let mut breaker = config.circuit_breaker.clone();
    let cap = MAX_PROBE_INTERVAL.as_millis() as u64;
    breaker.timeout_ms = breaker.timeout_ms.min(cap);
    breaker
}

/// Wraps `provider` as retry -> circuit breaker -> provider, with the configuration's retry
/// policy and breaker (see [`breaker_config`]).
pub fn wrap(provider: Arc<dyn MessagingService>, config: &MessagingConfig) -> Resilient {
    let breakers = Arc::new(CircuitBreakerManager::new(breaker_config(config)));
    let name = provider.provider().as_str();
    let breaker = breakers.get_or_create(name);
    // Retry outside the breaker: once it opens, retry sees it (`Next::ready`) and stops.
    let protected = ServiceStack::new(provider)
        .layer(breakers.layer(name))
        .build();
    let retry = Arc::new(RetryService::new(protected, config.retry_policy.clone()));
    Resilient {
        service: retry.clone(),
        breakers,
        breaker,
        retry,
        ride: RideThrough::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tasker_messaging::resilience::FaultInjectingService;
    use tasker_messaging::{InMemoryMessageService, QueueName};

    #[tokio::test(start_paused = true)]
    async fn a_loop_rides_through_an_outage_with_one_warning_and_a_count() {
        let mem: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let q = QueueName::new("ride_q").unwrap();
        mem.create_queue(&q).await.unwrap();
        let fault = FaultInjectingService::new(mem);
        let control = fault.control();
        let resilient = wrap(Arc::new(fault), &MessagingConfig::default());
        control.fail_always();
        let service = resilient.service.clone();
        let ride = resilient.ride.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            ride.run("stats", None, || service.get_queue_stats(&q))
                .await
                .map(|s| s.total())
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!task.is_finished(), "a retryable error never ends the loop");
        let calls_during = control.calls();
        // Breaker open: about one probe per MAX_PROBE_INTERVAL, not a hot loop.
        assert!(calls_during < 20, "{calls_during} backend calls in 10 s");
        control.heal();
        let total = task.await.unwrap().unwrap();
        assert_eq!(total, 0);
        let report = resilient.report();
        assert!(report.breaker_openings >= 1, "{report:?}");
        assert!(report.retried_operations > 5, "{report:?}");
        assert_eq!(report.outages, 1);
        // From the loop's first failure (after the retry layer's own retries) to the success.
        assert!(report.degraded_secs >= 8.0, "{report:?}");
        assert!(started.elapsed() < Duration::from_secs(10) + MAX_PROBE_INTERVAL * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_while_settling_continue_the_outage_and_degraded_time_is_not_doubled() {
        let faults = FaultCounters::new();
        faults.success();
        tokio::time::advance(Duration::from_secs(1)).await;
        faults.failure("op", &"down");
        tokio::time::advance(Duration::from_secs(4)).await;
        faults.success();
        tokio::time::advance(Duration::from_millis(500)).await;
        faults.failure("op", &"half-open refusal");
        tokio::time::advance(Duration::from_millis(500)).await;
        faults.success();
        assert_eq!(faults.outages(), 1, "a half-open flap is the same outage");
        assert_eq!(faults.degraded(), Duration::from_secs(6));
        tokio::time::advance(Duration::from_secs(10)).await;
        faults.failure("op", &"down again");
        faults.success();
        assert_eq!(faults.outages(), 2, "a failure long after is a new outage");
        assert_eq!(faults.retried(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_end_at_once_and_deadlines_bound_retries() {
        let mem: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let resilient = wrap(mem, &MessagingConfig::default());
        let missing = QueueName::new("ride_missing").unwrap();
        let err = resilient
            .ride
            .run("stats", None, || {
                resilient.service.get_queue_stats(&missing)
            })
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::QueueNotFound { .. }));
        assert_eq!(resilient.report().retried_operations, 0);

        let started = Instant::now();
        let deadline = started + Duration::from_secs(3);
        let err = resilient
            .ride
            .run("always down", Some(deadline), || async {
                Err::<(), _>(MessagingError::Timeout {
                    operation: "test",
                    after: Duration::ZERO,
                })
            })
            .await
            .unwrap_err();
        assert!(err.is_retryable());
        assert!(started.elapsed() <= Duration::from_secs(3));
    }
}
