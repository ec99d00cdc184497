//! Health: a state machine compatible with the executors' `ExecutorHealth`.
//!
//! ```text
//! Starting -> Healthy <-> Degraded <-> Unhealthy
//!    \___________________/^   ^
//!     \______________________/   (Starting may go to any state once known)
//! ```
//!
//! Healthy and Unhealthy are never adjacent: a failing service passes through Degraded on the
//! way down, and a recovering one passes through Degraded on the way back (recovery). So one
//! bad health check makes a healthy service Degraded, and only a second makes it Unhealthy;
//! one good check after an outage makes it Degraded ("recovering"), a second Healthy.
//! [`HealthStateMachine::transition`] rejects any other move with [`InvalidHealthTransition`].
//!
//! [`HealthMonitor`] feeds the machine from a health check, a circuit breaker's state and the
//! error rate the breaker saw since the previous evaluation.

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use super::{CircuitBreaker, CircuitState};
use crate::error::Result;
use crate::service::{MessagingHealth, MessagingService};

/// The executor-compatible health states.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HealthState {
    Starting,
    Healthy,
    Degraded { reason: String },
    Unhealthy { error: String },
}

impl HealthState {
    fn rank(&self) -> u8 {
        match self {
            HealthState::Starting => 0,
            HealthState::Healthy => 1,
            HealthState::Degraded { .. } => 2,
            HealthState::Unhealthy { .. } => 3,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Degraded { .. } => "degraded",
            HealthState::Unhealthy { .. } => "unhealthy",
        }
    }

    /// The same state as a [`MessagingHealth`] (Starting reads as Degraded).
    pub fn to_messaging_health(&self, queue_depth: u64, in_flight: u64) -> MessagingHealth {
        match self {
            HealthState::Starting => MessagingHealth::Degraded {
                reason: "starting".into(),
            },
            HealthState::Healthy => MessagingHealth::Healthy {
                queue_depth,
                in_flight,
            },
            HealthState::Degraded { reason } => MessagingHealth::Degraded {
                reason: reason.clone(),
            },
            HealthState::Unhealthy { error } => MessagingHealth::Unhealthy {
                error: error.clone(),
            },
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthState::Degraded { reason } => write!(f, "degraded ({reason})"),
            HealthState::Unhealthy { error } => write!(f, "unhealthy ({error})"),
            other => f.write_str(other.name()),
        }
    }
}

/// A move the state machine does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid health transition from {from} to {to}")]
pub struct InvalidHealthTransition {
    pub from: &'static str,
    pub to: &'static str,
}

/// The health state and its history of changes.
#[derive(Debug)]
pub struct HealthStateMachine {
    state: HealthState,
    transitions: u64,
}

impl Default for HealthStateMachine {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthStateMachine {
    pub fn new() -> Self {
        HealthStateMachine {
            state: HealthState::Starting,
            transitions: 0,
        }
    }

    pub fn state(&self) -> &HealthState {
        &self.state
    }

    /// State changes so far (a new reason within the same state is not a change).
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Whether `from -> to` is allowed.
    pub fn allowed(from: &HealthState, to: &HealthState) -> bool {
        use HealthState::*;
        match (from, to) {
            (_, Starting) => matches!(from, Starting),
            (Starting, _) => true,
            _ => from.rank().abs_diff(to.rank()) <= 1,
        }
    }

    /// Moves to `to`, or refuses with a typed error and stays.
    pub fn transition(&mut self, to: HealthState) -> Result<(), InvalidHealthTransition> {
        if !Self::allowed(&self.state, &to) {
            return Err(InvalidHealthTransition {
                from: self.state.name(),
                to: to.name(),
            });
        }
        if self.state.rank() != to.rank() {
            self.transitions += 1;
            tracing::info!(from = %self.state, to = %to, "messaging health change");
        }
        self.state = to;
        Ok(())
    }

    /// Moves one allowed step towards `target` (all the way from Starting).
    pub fn step_towards(&mut self, target: HealthState) -> &HealthState {
        let next = match (&self.state, target) {
            (HealthState::Healthy, HealthState::Unhealthy { error }) => HealthState::Degraded {
                reason: format!("failing: {error}"),
            },
            (HealthState::Unhealthy { .. }, HealthState::Healthy) => HealthState::Degraded {
                reason: "recovering".into(),
            },
            (_, target) => target,
        };
        // Every `next` above is adjacent to the current state by construction.
        let _ = self.transition(next);
        &self.state
    }
}

/// Thresholds turning signals into a target state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthPolicy {
    /// Error rate at or above which the service is Degraded (default 0.05).
    pub degraded_error_rate: f64,
    /// Error rate at or above which it is Unhealthy (default 0.5).
    pub unhealthy_error_rate: f64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            degraded_error_rate: 0.05,
            unhealthy_error_rate: 0.5,
        }
    }
}

/// What one evaluation saw.
#[derive(Clone, Debug)]
pub struct HealthSignals {
    pub check: std::result::Result<MessagingHealth, String>,
    pub breaker: Option<CircuitState>,
    /// Failed share of calls since the previous evaluation; `None` when there were none.
    pub error_rate: Option<f64>,
}

impl HealthSignals {
    /// The state these signals call for, worst signal first.
    pub fn target(&self, policy: &HealthPolicy) -> HealthState {
        if let Err(e) = &self.check {
            return HealthState::Unhealthy {
                error: format!("health check failed: {e}"),
            };
        }
        if let Ok(MessagingHealth::Unhealthy { error }) = &self.check {
            return HealthState::Unhealthy {
                error: error.clone(),
            };
        }
        if self.breaker == Some(CircuitState::Open) {
            return HealthState::Unhealthy {
                error: "circuit breaker open".into(),
            };
        }
        if let Some(rate) = self.error_rate {
            if rate >= policy.unhealthy_error_rate {
                return HealthState::Unhealthy {
                    error: format!("error rate {:.0}%", rate * 100.0),
                };
            }
        }
        if let Ok(MessagingHealth::Degraded { reason }) = &self.check {
            return HealthState::Degraded {
                reason: reason.clone(),
            };
        }
        if self.breaker == Some(CircuitState::HalfOpen) {
            return HealthState::Degraded {
                reason: "circuit breaker half-open (probing)".into(),
            };
        }
        if let Some(rate) = self.error_rate {
            if rate >= policy.degraded_error_rate {
                return HealthState::Degraded {
                    reason: format!("error rate {:.0}%", rate * 100.0),
                };
            }
        }
        HealthState::Healthy
    }
}

/// Evaluates a service's health from its health check, breaker and error rate.
pub struct HealthMonitor {
    service: Arc<dyn MessagingService>,
    breaker: Option<Arc<CircuitBreaker>>,
    policy: HealthPolicy,
    inner: Mutex<MonitorState>,
}

struct MonitorState {
    machine: HealthStateMachine,
    last_calls: u64,
    last_failures: u64,
}

impl HealthMonitor {
    pub fn new(service: Arc<dyn MessagingService>, policy: HealthPolicy) -> Self {
        HealthMonitor {
            service,
            breaker: None,
            policy,
            inner: Mutex::new(MonitorState {
                machine: HealthStateMachine::new(),
                last_calls: 0,
                last_failures: 0,
            }),
        }
    }

    /// Also reads `breaker`'s state and its failure counts as the error rate.
    pub fn with_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    pub fn state(&self) -> HealthState {
        self.inner.lock().machine.state().clone()
    }

    pub fn transitions(&self) -> u64 {
        self.inner.lock().machine.transitions()
    }

    /// Gathers the signals now (runs the health check).
    pub async fn signals(&self) -> HealthSignals {
        let check = self.service.health_check().await.map_err(|e| e.to_string());
        let (breaker, error_rate) = match &self.breaker {
            None => (None, None),
            Some(b) => {
                let snap = b.snapshot();
                let mut st = self.inner.lock();
                let calls = snap.total_calls - st.last_calls;
                let failures = snap.total_failures - st.last_failures;
                st.last_calls = snap.total_calls;
                st.last_failures = snap.total_failures;
                let rate = (calls > 0).then(|| failures as f64 / calls as f64);
                (Some(snap.state), rate)
            }
        };
        HealthSignals {
            check,
            breaker,
            error_rate,
        }
    }

    /// Gathers signals and moves the state machine one step towards what they call for.
    pub async fn evaluate(&self) -> HealthState {
        let signals = self.signals().await;
        self.apply(&signals)
    }

    /// Moves the state machine one step towards what `signals` call for.
    pub fn apply(&self, signals: &HealthSignals) -> HealthState {
        let target = signals.target(&self.policy);
        self.inner.lock().machine.step_towards(target).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CircuitBreakerConfig;
    use crate::providers::in_memory::InMemoryMessageService;
    use crate::queue_name::QueueName;
    use crate::resilience::fault::FaultInjectingService;
    use crate::resilience::CircuitBreakerService;
    use std::time::Duration;

    fn degraded(r: &str) -> HealthState {
        HealthState::Degraded { reason: r.into() }
    }
    fn unhealthy(e: &str) -> HealthState {
        HealthState::Unhealthy { error: e.into() }
    }

    #[test]
    fn invalid_transitions_are_refused_with_a_typed_error() {
        let mut m = HealthStateMachine::new();
        m.transition(HealthState::Healthy).unwrap();
        let err = m.transition(unhealthy("down")).unwrap_err();
        assert_eq!(
            err,
            InvalidHealthTransition {
                from: "healthy",
                to: "unhealthy"
            }
        );
        assert_eq!(
            m.state(),
            &HealthState::Healthy,
            "a refused move leaves the state"
        );
        assert!(m.transition(HealthState::Starting).is_err());
        m.transition(degraded("slow")).unwrap();
        m.transition(unhealthy("down")).unwrap();
        assert!(
            m.transition(HealthState::Healthy).is_err(),
            "recovery goes through degraded"
        );
        m.transition(degraded("recovering")).unwrap();
        m.transition(HealthState::Healthy).unwrap();
        assert_eq!(m.transitions(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn monitor_walks_down_and_back_up_through_degraded() {
        let mem: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let queue = QueueName::new("health_q").unwrap();
        mem.create_queue(&queue).await.unwrap();
        let fault = FaultInjectingService::new(mem);
        let control = fault.control();
        let breaker = Arc::new(CircuitBreaker::new(
            "health",
            CircuitBreakerConfig {
                failure_threshold: 3,
                success_threshold: 1,
                timeout_ms: 1_000,
                half_open_max_calls: 1,
            },
        ));
        let svc: Arc<dyn MessagingService> =
            Arc::new(CircuitBreakerService::new(Arc::new(fault), breaker.clone()));
        let monitor =
            HealthMonitor::new(svc.clone(), HealthPolicy::default()).with_breaker(breaker);
        assert_eq!(monitor.state(), HealthState::Starting);
        assert_eq!(monitor.evaluate().await, HealthState::Healthy);

        // 1 failure in 10 calls (plus the health check: 9%): degraded by error rate.
        for i in 0..10 {
            if i == 0 {
                control.fail_next(1);
            }
            let _ = svc.get_queue_stats(&queue).await;
        }
        assert!(matches!(
            monitor.evaluate().await,
            HealthState::Degraded { .. }
        ));
        assert!(matches!(monitor.evaluate().await, HealthState::Healthy));

        // The backend goes down: the health check fails and the breaker opens.
        control.fail_always();
        for _ in 0..3 {
            let _ = svc.get_queue_stats(&queue).await;
        }
        let s = monitor.evaluate().await;
        assert!(
            matches!(s, HealthState::Degraded { .. }),
            "one step down first: {s}"
        );
        assert!(matches!(
            monitor.evaluate().await,
            HealthState::Unhealthy { .. }
        ));

        control.heal();
        tokio::time::advance(Duration::from_millis(1_000)).await;
        // The health check is the half-open probe; it succeeds and closes the breaker.
        let s = monitor.evaluate().await;
        assert_eq!(s, degraded("recovering"));
        assert_eq!(monitor.evaluate().await, HealthState::Healthy);
        assert_eq!(monitor.transitions(), 7);
    }
}
