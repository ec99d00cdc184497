//! The orchestration loop coordinator: owns the pools and the messaging service, scales pools
//! from their queue depth, and shuts everything down in order.
//!
//! The control loop holds only a `Weak` reference to the coordinator's state, so dropping the
//! coordinator ends the loop at its next tick instead of keeping everything alive.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use tasker_messaging::MessagingService;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pool::{Pool, PoolSnapshot, ShutdownReport};

/// Coordinator settings.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// How often the control loop looks at queues and pools.
    pub interval: Duration,
    /// Visible messages one worker is expected to keep up with; more adds workers.
    pub target_depth_per_worker: u64,
    /// How long shutdown waits for in-flight batches.
    pub drain_timeout: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            interval: Duration::from_millis(250),
            target_depth_per_worker: 100,
            drain_timeout: Duration::from_secs(10),
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

struct Inner {
    messaging: Arc<dyn MessagingService>,
    pools: Vec<Arc<dyn Pool>>,
    config: CoordinatorConfig,
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
        OrchestrationLoopCoordinator {
            inner: Arc::new(Inner {
                messaging,
                pools,
                config,
            }),
            stop: CancellationToken::new(),
            control: parking_lot::Mutex::new(None),
        }
    }

    pub fn messaging(&self) -> &Arc<dyn MessagingService> {
        &self.inner.messaging
    }

    pub fn pools(&self) -> &[Arc<dyn Pool>] {
        &self.inner.pools
    }

    /// Starts each pool's minimum workers and the control loop.
    pub async fn start(&self) {
        for pool in &self.inner.pools {
            pool.scale_to(pool.min_workers()).await;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let stop = self.stop.clone();
        let interval = self.inner.config.interval;
        let handle = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { break };
                inner.tick().await;
            }
        });
        *self.control.lock() = Some(handle);
    }

    /// One control iteration (the loop calls it every `interval`); returns what it saw.
    pub async fn tick(&self) -> Vec<PoolStatus> {
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

impl Inner {
    async fn tick(&self) -> Vec<PoolStatus> {
        let mut statuses = Vec::with_capacity(self.pools.len());
        for pool in &self.pools {
            let (depth, in_flight) = match self.messaging.get_queue_stats(pool.queue()).await {
                Ok(s) => (s.message_count, s.in_flight_count.unwrap_or(0)),
                Err(error) => {
                    tracing::warn!(pool = pool.name(), %error, "queue stats unavailable");
                    (0, 0)
                }
            };
            let current = pool.worker_count().await;
            let wanted = desired_workers(
                depth,
                self.config.target_depth_per_worker,
                current,
                pool.min_workers(),
                pool.max_workers(),
            );
            let workers = if wanted != current {
                pool.scale_to(wanted).await
            } else {
                current
            };
            statuses.push(PoolStatus {
                name: pool.name().to_owned(),
                queue: pool.queue().to_string(),
                workers,
                queue_depth: depth,
                in_flight,
                stats: pool.stats(),
            });
        }
        statuses
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
