//! The orchestration loop coordinator: owns the pools and the messaging service, and on every
//! tick
//!
//! 1. reads each pool's queue depth and error counts,
//! 2. moves the health state machine (`HealthMonitor`: health check, breaker, error rate, plus
//!    the pools' own error rate) one step towards what it sees,
//! 3. feeds global backpressure (depth, in flight, error rate, stats latency) and gives every
//!    pool the batch size the pressure level allows,
//! 4. scales pools: up at once to what the depth needs, down one worker per tick; not up at all
//!    under critical pressure or while unhealthy, by one under elevated pressure; and each worker
//!    beyond the first holds a reservation in the shared `ResourceBudget`, so pools never grow
//!    past what the system can give.
//!
//! The control loop holds only a `Weak` reference to the coordinator's state, so dropping the
//! coordinator ends the loop at its next tick instead of keeping everything alive.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tasker_messaging::resilience::{
    BudgetReservation, BudgetSnapshot, GlobalBackpressureController, HealthMonitor, HealthPolicy,
    HealthState, PressureLevel, PressureSample, ResourceBudget,
};
use tasker_messaging::{MessagingHealth, MessagingService, ResourceRequirements};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pool::{Pool, PoolSnapshot, ShutdownReport};

/// Longest a tick waits for one queue's stats or the health check: a backend that hangs must
/// not freeze the health state `/health` reports.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Coordinator settings.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// How often the control loop looks at queues and pools.
    pub interval: Duration,
    /// While every queue is empty, nothing is in flight, the backend is healthy and no pool
    /// took a message since the last look, the loop looks less often: its interval doubles
    /// up to this. A pool whose idle worker receives again wakes it at once
    /// ([`crate::pool::Pool::activity`]); an outage that begins while idle shows in
    /// `/health` up to this late.
    pub idle_interval: Duration,
    /// Visible messages one worker is expected to keep up with; more adds workers.
    pub target_depth_per_worker: u64,
    /// How long shutdown waits for in-flight batches.
    pub drain_timeout: Duration,
    /// What one worker holds, reserved in the budget for every worker beyond a pool's first.
    pub worker_requirements: ResourceRequirements,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            interval: Duration::from_millis(250),
            idle_interval: Duration::from_secs(10),
            target_depth_per_worker: 100,
            drain_timeout: Duration::from_secs(10),
            worker_requirements: ResourceRequirements {
                db_connections: 0,
                memory_mb: 1,
            },
        }
    }
}

/// One pool as the coordinator last saw it.
#[derive(Clone, Debug, Serialize)]
pub struct PoolStatus {
    pub name: String,
    pub queue: String,
    pub workers: usize,
    pub queue_depth: u64,
    pub in_flight: u64,
    pub stats: PoolSnapshot,
}

/// What the coordinator saw on its last tick: the aggregated state `/health` reports.
#[derive(Clone, Debug, Serialize)]
pub struct CoordinatorStatus {
    pub health: HealthState,
    pub pressure: PressureLevel,
    pub queue_depth: u64,
    pub in_flight: u64,
    pub pools: Vec<PoolStatus>,
    pub budget: Option<BudgetSnapshot>,
}

impl CoordinatorStatus {
    /// The aggregated state as the plan's `MessagingHealth`.
    pub fn messaging_health(&self) -> MessagingHealth {
        self.health
            .to_messaging_health(self.queue_depth, self.in_flight)
    }
}

struct Inner {
    messaging: Arc<dyn MessagingService>,
    pools: Vec<Arc<dyn Pool>>,
    config: CoordinatorConfig,
    health: Arc<HealthMonitor>,
    backpressure: Option<Arc<GlobalBackpressureController>>,
    budget: Option<Arc<ResourceBudget>>,
    control: parking_lot::Mutex<ControlState>,
}

#[derive(Default)]
struct ControlState {
    /// Budget held per pool (index), one reservation per worker beyond the first.
    reservations: HashMap<usize, Vec<BudgetReservation>>,
    /// Pool counters at the previous tick, for error rates.
    last: HashMap<usize, PoolSnapshot>,
    status: Option<CoordinatorStatus>,
}

/// Owns the pools and the messaging service (the plan's `OrchestrationLoopCoordinator`).
pub struct OrchestrationLoopCoordinator {
    inner: Arc<Inner>,
    stop: CancellationToken,
    control: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for OrchestrationLoopCoordinator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl OrchestrationLoopCoordinator {
    pub fn new(
        messaging: Arc<dyn MessagingService>,
        pools: Vec<Arc<dyn Pool>>,
        config: CoordinatorConfig,
    ) -> Self {
        Self::with_resilience(messaging, pools, config, Resilience::default())
    }

    /// A coordinator using the given health monitor, backpressure controller and budget.
    pub fn with_resilience(
        messaging: Arc<dyn MessagingService>,
        pools: Vec<Arc<dyn Pool>>,
        config: CoordinatorConfig,
        resilience: Resilience,
    ) -> Self {
        let health = resilience.health.unwrap_or_else(|| {
            Arc::new(HealthMonitor::new(
                messaging.clone(),
                HealthPolicy::default(),
            ))
        });
        OrchestrationLoopCoordinator {
            inner: Arc::new(Inner {
                messaging,
                pools,
                config,
                health,
                backpressure: resilience.backpressure,
                budget: resilience.budget,
                control: parking_lot::Mutex::new(ControlState::default()),
            }),
            stop: CancellationToken::new(),
            control: parking_lot::Mutex::new(None),
        }
    }

    /// The aggregated state of the last tick (`None` before the first).
    pub fn status(&self) -> Option<CoordinatorStatus> {
        self.inner.control.lock().status.clone()
    }

    pub fn messaging(&self) -> &Arc<dyn MessagingService> {
        &self.inner.messaging
    }

    pub fn pools(&self) -> &[Arc<dyn Pool>] {
        &self.inner.pools
    }

    /// The first permanent error that stopped a pool (the run cannot go on), if any.
    pub fn fatal_error(&self) -> Option<String> {
        self.inner.pools.iter().find_map(|p| p.fatal_error())
    }

    /// Starts each pool's minimum workers and the control loop.
    pub async fn start(&self) {
        for pool in &self.inner.pools {
            pool.scale_to(pool.min_workers()).await;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let stop = self.stop.clone();
        let config = self.inner.config.clone();
        let activity: Vec<_> = self
            .inner
            .pools
            .iter()
            .filter_map(|p| p.activity())
            .collect();
        let handle = tokio::spawn(async move {
            // The first look at once, then every `interval`, or less often while idle.
            let idle_waits =
                || crate::resilient::doubling_waits(config.interval, config.idle_interval);
            let mut idle_delays = idle_waits();
            let mut wait = Duration::ZERO;
            let mut work_seen = None;
            loop {
                let woken = async {
                    if activity.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    futures::future::select_all(activity.iter().map(|a| Box::pin(a.notified())))
                        .await;
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                    _ = woken => {}
                }
                let Some(inner) = weak.upgrade() else { break };
                let status = inner.tick().await;
                drop(inner);
                let work: u64 = status
                    .pools
                    .iter()
                    .map(|p| p.stats.batches + p.stats.errors)
                    .sum();
                let idle = status.queue_depth == 0
                    && status.in_flight == 0
                    && status.health == HealthState::Healthy
                    && work_seen == Some(work);
                work_seen = Some(work);
                wait = if idle {
                    idle_delays.next().unwrap_or(config.idle_interval)
                } else {
                    idle_delays = idle_waits();
                    config.interval
                };
            }
        });
        *self.control.lock() = Some(handle);
    }

    /// One control iteration (the loop calls it every `interval`); returns what it saw.
    pub async fn tick(&self) -> CoordinatorStatus {
        self.inner.tick().await
    }

    /// Stops the control loop, then every pool (draining in-flight batches).
    pub async fn shutdown(&self) -> Vec<(String, ShutdownReport)> {
        self.stop.cancel();
        let handle = self.control.lock().take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        let mut reports = Vec::new();
        for pool in &self.inner.pools {
            let report = pool.shutdown(self.inner.config.drain_timeout).await;
            reports.push((pool.name().to_owned(), report));
        }
        reports
    }
}

/// Optional resilience parts a coordinator works with.
#[derive(Default)]
pub struct Resilience {
    /// Defaults to a monitor of the messaging service with the default policy.
    pub health: Option<Arc<HealthMonitor>>,
    pub backpressure: Option<Arc<GlobalBackpressureController>>,
    pub budget: Option<Arc<ResourceBudget>>,
}

impl Inner {
    async fn tick(&self) -> CoordinatorStatus {
        // 1. What the queues and pools look like.
        let stats_started = Instant::now();
        // Concurrently, each bounded in time: a hanging backend costs one timeout per tick,
        // not one per pool.
        let stats = futures::future::join_all(self.pools.iter().map(|pool| async move {
            tokio::time::timeout(PROBE_TIMEOUT, self.messaging.get_queue_stats(pool.queue()))
                .await
                .unwrap_or(Err(tasker_messaging::MessagingError::Timeout {
                    operation: "get_queue_stats",
                    after: PROBE_TIMEOUT,
                }))
        }))
        .await;
        let mut observed = Vec::with_capacity(self.pools.len());
        let mut stats_failures = 0u64;
        for (pool, stats) in self.pools.iter().zip(stats) {
            let (depth, in_flight) = match stats {
                Ok(s) => (s.message_count, s.in_flight_count.unwrap_or(0)),
                Err(error) => {
                    // Counted into the health state; the outage itself is logged once by the
                    // pools' fault counters, not here every tick for every pool.
                    stats_failures += 1;
                    tracing::debug!(pool = pool.name(), %error, "queue stats unavailable");
                    (0, 0)
                }
            };
            observed.push((depth, in_flight, pool.stats()));
        }
        let stats_latency = stats_started.elapsed() / (self.pools.len().max(1) as u32);
        let (queue_depth, in_flight) = observed
            .iter()
            .fold((0, 0), |(d, f), (depth, fl, _)| (d + depth, f + fl));
        let (batches, errors) = {
            let mut control = self.control.lock();
            let mut totals = (stats_failures, stats_failures);
            for (i, (_, _, now)) in observed.iter().enumerate() {
                let before = control.last.insert(i, *now).unwrap_or_default();
                totals.0 += (now.batches - before.batches) + (now.errors - before.errors);
                totals.1 += now.errors - before.errors;
            }
            totals
        };
        let pool_error_rate = (batches > 0).then(|| errors as f64 / batches as f64);

        // 2. Health: the service's own signals, worsened by the pools' error rate.
        let mut signals = match tokio::time::timeout(PROBE_TIMEOUT, self.health.signals()).await {
            Ok(signals) => signals,
            // A backend that does not answer (a database restarting: connections wait for the
            // pool's timeout) is as unhealthy as one that refuses.
            Err(_) => tasker_messaging::resilience::HealthSignals {
                check: Err(format!("no answer within {PROBE_TIMEOUT:?}")),
                breaker: None,
                error_rate: None,
            },
        };
        signals.error_rate = match (signals.error_rate, pool_error_rate) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let health = self.health.apply(&signals);

        // 3. Backpressure, and the batch size it allows.
        let pressure = match &self.backpressure {
            Some(controller) => {
                let level = controller.update(&PressureSample {
                    queue_depth,
                    in_flight,
                    error_rate: signals.error_rate.unwrap_or(0.0),
                    latency: stats_latency,
                });
                for pool in &self.pools {
                    pool.set_batch_size(controller.batch_size_for(pool.configured_batch_size()));
                }
                level
            }
            None => PressureLevel::Normal,
        };

        // 4. Scaling within pressure, health and budget.
        let mut pools = Vec::with_capacity(self.pools.len());
        for (i, (pool, (depth, pool_in_flight, stats))) in
            self.pools.iter().zip(observed).enumerate()
        {
            let current = pool.worker_count().await;
            let mut wanted = desired_workers(
                depth,
                self.config.target_depth_per_worker,
                current,
                pool.min_workers(),
                pool.max_workers(),
            );
            let unhealthy = matches!(health, HealthState::Unhealthy { .. });
            if pressure == PressureLevel::Critical || unhealthy {
                wanted = wanted.min(current.max(pool.min_workers()));
            } else if pressure == PressureLevel::Elevated {
                wanted = wanted.min(current + 1);
            }
            let wanted = self.reserve_for(i, pool.name(), wanted);
            let workers = if wanted != current {
                pool.scale_to(wanted).await
            } else {
                current
            };
            pools.push(PoolStatus {
                name: pool.name().to_owned(),
                queue: pool.queue().to_string(),
                workers,
                queue_depth: depth,
                in_flight: pool_in_flight,
                stats,
            });
        }
        let status = CoordinatorStatus {
            health,
            pressure,
            queue_depth,
            in_flight,
            pools,
            budget: self.budget.as_ref().map(|b| b.snapshot()),
        };
        self.control.lock().status = Some(status.clone());
        status
    }

    /// Holds one budget reservation per worker beyond the pool's first; returns how many
    /// workers the budget allows of `wanted`.
    fn reserve_for(&self, pool: usize, name: &str, wanted: usize) -> usize {
        let Some(budget) = &self.budget else {
            return wanted;
        };
        let mut control = self.control.lock();
        let held = control.reservations.entry(pool).or_default();
        if wanted == 0 {
            held.clear();
            return 0;
        }
        let extra = wanted - 1;
        held.truncate(extra);
        while held.len() < extra {
            match budget.reserve(name, self.config.worker_requirements.clone()) {
                Ok(reservation) => held.push(reservation),
                Err(error) => {
                    tracing::info!(pool = name, %error, "budget limits the pool");
                    break;
                }
            }
        }
        held.len() + 1
    }
}

/// Workers wanted for a queue depth: up at once to what the depth needs, down one per tick
/// (so a momentarily empty queue does not tear a busy pool down), within min..=max.
pub fn desired_workers(
    depth: u64,
    per_worker: u64,
    current: usize,
    min: usize,
    max: usize,
) -> usize {
    let needed = depth.div_ceil(per_worker.max(1)) as usize;
    let wanted = if needed > current {
        needed
    } else if needed < current {
        current - 1
    } else {
        current
    };
    wanted.clamp(min, max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_is_fast_up_slow_down_and_bounded() {
        assert_eq!(desired_workers(1000, 100, 1, 1, 8), 8);
        assert_eq!(desired_workers(350, 100, 1, 1, 8), 4);
        assert_eq!(desired_workers(0, 100, 4, 1, 8), 3);
        assert_eq!(desired_workers(0, 100, 1, 1, 8), 1);
        assert_eq!(desired_workers(0, 100, 0, 2, 8), 2);
        assert_eq!(desired_workers(150, 100, 2, 1, 8), 2);
    }
}
