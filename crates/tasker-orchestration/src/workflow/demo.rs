//! The main job: run N order-fulfilment tasks through the executors on any provider.
//!
//! The run rides through outages of the backend: every call it makes (queue creation, task
//! submission, the executors' work, the summary's reads) retries retryable errors with backoff
//! ([`RideThrough`]) and only a permanent error (a deleted queue, bad configuration) or the
//! timeout ends it. The summary reports what it rode through ([`FaultReport`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tasker_messaging::{
    ExecutorType, MessagingError, MessagingService, NamespaceQueueRouter, QueueOptions,
    RetryPolicy, StepMessage,
};

use super::handlers::{StepWorker, TransitionHandler};
use super::model::{
    FailurePlan, StepStatus, TaskState, TaskStatus, WorkflowDef, WorkflowQueues, ORDER_FULFILLMENT,
};
use super::store::{StoreError, TaskStore};
use crate::coordinator::{CoordinatorConfig, OrchestrationLoopCoordinator, Resilience};
use crate::executor::ExecutorConfig;
use crate::pool::{ExecutorPool, Pool, PoolConfig};
use crate::resilient::{FaultReport, Resilient, RideThrough};

/// Deliveries a message may get beyond the executors' attempts before the provider
/// dead-letters it on its own. Attempts are counted in the task state; redeliveries caused by
/// outages (leases lost with a connection) raise the provider's receive count without being
/// attempts, so the provider's limit is only a backstop for messages that crash workers.
pub const REDELIVERY_ALLOWANCE: u32 = 20;

/// Demo settings.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub tasks: usize,
    /// Tasks in flight at most (0: submit all at once).
    pub concurrency: usize,
    /// Share of steps whose first one or two attempts fail with a retryable error.
    pub transient_failure_rate: f64,
    /// Share of steps that fail for good (dead-lettered).
    pub permanent_failure_rate: f64,
    pub min_workers: usize,
    pub max_workers: usize,
    pub batch_size: usize,
    /// Simulated work per step.
    pub step_work: Duration,
    /// Deliveries of a failing step before it is dead-lettered.
    pub max_attempts: u32,
    pub retry: RetryPolicy,
    pub visibility_timeout: Duration,
    pub seed: u64,
    /// The run fails if tasks are still open after this.
    pub timeout: Duration,
    pub router: NamespaceQueueRouter,
    /// The resilience stack `messaging` was wrapped in (`resilient::wrap`), whose breaker and
    /// counters the run reports; `None`: the loops still ride through outages, with their own
    /// counters.
    pub resilience: Option<Resilient>,
    /// Counters of a run without `resilience`.
    pub own_ride: RideThrough,
}

impl DemoConfig {
    /// How the run's loops ride through outages.
    pub fn ride(&self) -> RideThrough {
        self.resilience
            .as_ref()
            .map(|r| r.ride.clone())
            .unwrap_or_else(|| self.own_ride.clone())
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            tasks: 1_000,
            concurrency: 0,
            transient_failure_rate: 0.05,
            permanent_failure_rate: 0.01,
            min_workers: 1,
            max_workers: 4,
            batch_size: 20,
            step_work: Duration::ZERO,
            max_attempts: 3,
            retry: RetryPolicy {
                max_retries: 3,
                initial_backoff_ms: 10,
                max_backoff_ms: 1_000,
                backoff_multiplier: 2.0,
                ..RetryPolicy::default()
            },
            visibility_timeout: Duration::from_secs(30),
            seed: 42,
            timeout: Duration::from_secs(600),
            router: NamespaceQueueRouter::default(),
            resilience: None,
            own_ride: RideThrough::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A permanent error stopped a pool (a deleted queue, bad configuration).
    #[error("stopped: {0}")]
    Stopped(String),
    #[error("{open} of {total} tasks still open after {after:?}")]
    Timeout {
        open: u64,
        total: u64,
        after: Duration,
    },
}

/// What the run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DemoSummary {
    pub provider: String,
    pub tasks: u64,
    pub tasks_completed: u64,
    pub tasks_failed: u64,
    pub steps_total: u64,
    pub steps_completed: u64,
    pub steps_dead_lettered: u64,
    pub steps_not_reached: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Messages in the namespace queues' dead-letter queues.
    pub dead_letters: u64,
    /// Messages left visible, in flight or delayed in the workflow's queues (should be 0).
    pub messages_left: u64,
    pub elapsed_secs: f64,
    pub tasks_per_sec: f64,
    pub steps_per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Outages the run rode through.
    pub faults: FaultReport,
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            ("provider", self.provider.clone()),
            (
                "tasks",
                format!(
                    "{} ({} completed, {} failed)",
                    self.tasks, self.tasks_completed, self.tasks_failed
                ),
            ),
            (
                "steps",
                format!(
                    "{} ({} completed, {} dead-lettered, {} not reached)",
                    self.steps_total,
                    self.steps_completed,
                    self.steps_dead_lettered,
                    self.steps_not_reached
                ),
            ),
            ("retries", self.retries.to_string()),
            ("dead letters", self.dead_letters.to_string()),
            ("messages left", self.messages_left.to_string()),
            (
                "faults",
                format!(
                    "{} retried operations, {} breaker openings, {:.1} s degraded ({} outages)",
                    self.faults.retried_operations,
                    self.faults.breaker_openings,
                    self.faults.degraded_secs,
                    self.faults.outages
                ),
            ),
            ("elapsed", format!("{:.2} s", self.elapsed_secs)),
            (
                "throughput",
                format!(
                    "{:.0} tasks/s, {:.0} steps/s",
                    self.tasks_per_sec, self.steps_per_sec
                ),
            ),
            (
                "task latency",
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    self.latency_p50_ms, self.latency_p99_ms, self.latency_max_ms
                ),
            ),
        ];
        for (k, v) in rows {
            writeln!(f, "  {k:<14} {v}")?;
        }
        Ok(())
    }
}

/// The failures to inject into one task's steps.
pub fn plan_failures(rng: &mut impl Rng, steps: usize, config: &DemoConfig) -> Vec<FailurePlan> {
    (0..steps)
        .map(|_| {
            let r: f64 = rng.random();
            if r < config.permanent_failure_rate {
                FailurePlan {
                    transient: 0,
                    permanent: true,
                }
            } else if r < config.permanent_failure_rate + config.transient_failure_rate {
                // Fail once or twice, always leaving a last attempt that succeeds.
                let most = config.max_attempts.saturating_sub(1).clamp(1, 2);
                FailurePlan {
                    transient: rng.random_range(1..=most),
                    permanent: false,
                }
            } else {
                FailurePlan::default()
            }
        })
        .collect()
}

/// How often the demo reports progress, also while it is still submitting.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Runs the demo and returns its summary. `progress(done, total)` is called as tasks finish.
pub async fn run_demo(
    messaging: Arc<dyn MessagingService>,
    store: Arc<dyn TaskStore>,
    config: DemoConfig,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<DemoSummary, DemoError> {
    let workflow: WorkflowDef = ORDER_FULFILLMENT;
    let queues = WorkflowQueues {
        router: config.router.clone(),
    };
    let ride = config.ride();
    let started = Instant::now();
    let deadline = started + config.timeout;
    let until = Some(tokio::time::Instant::from_std(deadline));
    ride.run("create queues", until, || {
        create_workflow_queues(&*messaging, &workflow, &queues, config.max_attempts)
    })
    .await?;

    let pools = workflow_pools(&messaging, &store, &workflow, &queues, &config)?;
    let health = config.resilience.as_ref().map(|r| {
        Arc::new(
            tasker_messaging::resilience::HealthMonitor::new(messaging.clone(), Default::default())
                .with_breaker(r.breaker.clone()),
        )
    });
    let coordinator = OrchestrationLoopCoordinator::with_resilience(
        messaging.clone(),
        pools,
        CoordinatorConfig::default(),
        Resilience {
            health,
            ..Resilience::default()
        },
    );
    coordinator.start().await;

    let total = config.tasks as u64;
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut submitted = 0u64;
    let mut finished = 0u64;
    let window = if config.concurrency == 0 {
        total
    } else {
        config.concurrency as u64
    };
    let mut reported = Instant::now();
    while finished < total {
        // Submitting thousands of tasks takes seconds on a real backend while the first ones
        // already finish: report progress every PROGRESS_EVERY in between.
        while submitted < total
            && submitted - finished < window
            && reported.elapsed() < PROGRESS_EVERY
        {
            if let Err(error) =
                submit_task_until(&*store, &workflow, &queues, &mut rng, &config, until).await
            {
                coordinator.shutdown().await;
                return Err(error.into());
            }
            submitted += 1;
        }
        if let Some(why) = coordinator.fatal_error() {
            coordinator.shutdown().await;
            return Err(DemoError::Stopped(why));
        }
        let now = Instant::now();
        if now >= deadline {
            coordinator.shutdown().await;
            return Err(DemoError::Timeout {
                open: total - finished,
                total,
                after: config.timeout,
            });
        }
        let target = if submitted < total {
            finished + 1
        } else {
            total
        };
        // More to submit within the window: only read the count, do not wait.
        let wait = if submitted < total && submitted - finished < window {
            Duration::ZERO
        } else {
            (deadline - now).min(PROGRESS_EVERY)
        };
        finished = store.wait_finished(target, wait).await?;
        progress(finished, total);
        reported = Instant::now();
    }
    let elapsed = started.elapsed();
    coordinator.shutdown().await;

    let mut summary = summarize(
        &messaging, &*store, &workflow, &queues, total, elapsed, &ride, until,
    )
    .await?;
    summary.faults = match &config.resilience {
        Some(resilient) => resilient.report(),
        None => FaultReport {
            retried_operations: ride.faults.retried(),
            outages: ride.faults.outages(),
            degraded_secs: ride.faults.degraded().as_secs_f64(),
            ..FaultReport::default()
        },
    };
    Ok(summary)
}

/// Creates the workflow's queues (idempotent). The executors count attempts and dead-letter
/// failures themselves; the queues' own dead-lettering comes only after
/// [`REDELIVERY_ALLOWANCE`] more deliveries, as a backstop.
pub async fn create_workflow_queues(
    messaging: &dyn MessagingService,
    workflow: &WorkflowDef,
    queues: &WorkflowQueues,
    max_attempts: u32,
) -> Result<(), MessagingError> {
    let options = QueueOptions::with_max_receive_count(max_attempts + REDELIVERY_ALLOWANCE);
    for queue in queues.all(workflow)? {
        messaging.create_queue_with(&queue, &options).await?;
    }
    Ok(())
}

/// A new task of `workflow` with failures planned by `config`, stored and requested; rides
/// through outages (the same task is stored again until it is: a repeat is harmless).
pub async fn submit_task(
    store: &dyn TaskStore,
    workflow: &WorkflowDef,
    queues: &WorkflowQueues,
    rng: &mut impl Rng,
    config: &DemoConfig,
) -> Result<(), StoreError> {
    submit_task_until(store, workflow, queues, rng, config, None).await
}

async fn submit_task_until(
    store: &dyn TaskStore,
    workflow: &WorkflowDef,
    queues: &WorkflowQueues,
    rng: &mut impl Rng,
    config: &DemoConfig,
    until: Option<tokio::time::Instant>,
) -> Result<(), StoreError> {
    let plans = plan_failures(rng, workflow.steps.len(), config);
    let task = TaskState::new(workflow, plans);
    let request = task.request(queues);
    config
        .ride()
        .run("submit task", until, || {
            store.insert_task(task.clone(), request.clone())
        })
        .await
}

/// One pool per executor type and one per namespace, all pulling through `messaging`.
pub fn workflow_pools(
    messaging: &Arc<dyn MessagingService>,
    store: &Arc<dyn TaskStore>,
    workflow: &WorkflowDef,
    queues: &WorkflowQueues,
    config: &DemoConfig,
) -> Result<Vec<Arc<dyn Pool>>, MessagingError> {
    let pool_config = PoolConfig {
        min_workers: config.min_workers,
        max_workers: config.max_workers,
        executor: ExecutorConfig {
            batch_size: config.batch_size,
            visibility_timeout: config.visibility_timeout,
            max_attempts: config.max_attempts,
            retry: config.retry.clone(),
            ride: config.ride(),
        },
        ..PoolConfig::default()
    };
    let mut pools: Vec<Arc<dyn Pool>> = Vec::new();
    for executor in ExecutorType::ALL {
        let handler = Arc::new(TransitionHandler::new(
            executor,
            store.clone(),
            *workflow,
            queues.clone(),
        ));
        pools.push(Arc::new(ExecutorPool::<StepMessage>::new(
            executor.to_string(),
            queues.executor(executor),
            messaging.clone(),
            handler,
            pool_config.clone(),
        )));
    }
    for namespace in workflow.namespaces() {
        let handler = Arc::new(StepWorker::new(
            store.clone(),
            queues.clone(),
            config.step_work,
            config.max_attempts,
        ));
        pools.push(Arc::new(ExecutorPool::<StepMessage>::new(
            format!("{namespace}_workers"),
            queues.namespace(namespace)?,
            messaging.clone(),
            handler,
            pool_config.clone(),
        )));
    }
    Ok(pools)
}

#[allow(clippy::too_many_arguments)]
async fn summarize(
    messaging: &Arc<dyn MessagingService>,
    store: &dyn TaskStore,
    workflow: &WorkflowDef,
    queues: &WorkflowQueues,
    total: u64,
    elapsed: Duration,
    ride: &RideThrough,
    until: Option<tokio::time::Instant>,
) -> Result<DemoSummary, DemoError> {
    let tasks = ride.run("read tasks", until, || store.all_tasks()).await?;
    let mut summary = DemoSummary {
        provider: messaging.provider().to_string(),
        tasks: total,
        elapsed_secs: elapsed.as_secs_f64(),
        ..Default::default()
    };
    // Microseconds up to an hour; longer latencies are clamped, not dropped.
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
        .expect("valid histogram bounds");
    for task in &tasks {
        match task.status {
            TaskStatus::Complete => summary.tasks_completed += 1,
            TaskStatus::Failed => summary.tasks_failed += 1,
            _ => {}
        }
        if let Some(us) = task.latency_us() {
            histogram.saturating_record(us.max(0) as u64);
        }
        for step in &task.steps {
            summary.steps_total += 1;
            match step.status {
                StepStatus::Completed => summary.steps_completed += 1,
                StepStatus::Failed => summary.steps_dead_lettered += 1,
                StepStatus::Pending => summary.steps_not_reached += 1,
                _ => {}
            }
            summary.retries += u64::from(step.attempts.saturating_sub(1));
        }
    }
    for queue in queues.all(workflow)? {
        let stats = ride
            .run("queue stats", until, || messaging.get_queue_stats(&queue))
            .await?;
        summary.messages_left += stats.total();
        summary.dead_letters += stats.dead_letter_count.unwrap_or(0);
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    summary.tasks_per_sec = total as f64 / secs;
    summary.steps_per_sec = summary.steps_completed as f64 / secs;
    summary.latency_p50_ms = histogram.value_at_quantile(0.5) as f64 / 1000.0;
    summary.latency_p99_ms = histogram.value_at_quantile(0.99) as f64 / 1000.0;
    summary.latency_max_ms = histogram.max() as f64 / 1000.0;
    Ok(summary)
}
