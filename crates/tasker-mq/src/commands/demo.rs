//! `tasker-mq demo`: the main job. Runs N order-fulfilment tasks (validate order -> reserve
//! inventory -> charge payment -> ship) through the executors on the chosen provider, with
//! injected transient and permanent failures, and prints a summary.
//!
//! The demo's queues are named `demo_<name>_queue`, apart from any real workload's, and are
//! purged before the run so an earlier interrupted run cannot skew the counts.
//!
//! The provider runs inside the orchestration's resilience stack (`resilient::wrap`: retry ->
//! circuit breaker -> provider), and the run rides through outages (see `docs/reliability.md`):
//! the summary's `faults` line says what it rode through.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tasker_messaging::{MessagingConfig, MessagingService, NamespaceQueueRouter};
use tasker_orchestration::resilient::{wrap, Resilient};
use tasker_orchestration::workflow::demo::create_workflow_queues;
use tasker_orchestration::workflow::{
    run_demo, DemoConfig, DemoSummary, InMemoryTaskStore, TaskStore, WorkflowQueues,
    ORDER_FULFILLMENT,
};

use crate::provider::GlobalOpts;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Tasks to run.
    #[arg(long, value_name = "N", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub tasks: u64,
    /// Tasks in flight at most (0: submit all at once). 1 measures the pipeline's latency.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub concurrency: usize,
    /// Share of steps whose first one or two attempts fail with a retryable error.
    #[arg(long, value_name = "RATE", default_value_t = 0.05)]
    pub transient_failure_rate: f64,
    /// Share of steps that fail for good and are dead-lettered.
    #[arg(long, value_name = "RATE", default_value_t = 0.01)]
    pub permanent_failure_rate: f64,
    /// Workers per pool at least.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_workers: usize,
    /// Workers per pool at most (the coordinator scales between the bounds).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_workers: usize,
    /// Messages per receive.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub batch_size: usize,
    /// Simulated work per step, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub step_work_ms: u64,
    /// Seed of the failure injection (same seed, same failures).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Give up when tasks are still open after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout_secs: u64,
    /// Print the summary as JSON on stdout (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

impl DemoArgs {
    fn validate(&self) -> anyhow::Result<()> {
        for (name, rate) in [
            ("--transient-failure-rate", self.transient_failure_rate),
            ("--permanent-failure-rate", self.permanent_failure_rate),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&rate),
                "{name} must be between 0 and 1, got {rate}"
            );
        }
        anyhow::ensure!(
            self.transient_failure_rate + self.permanent_failure_rate <= 1.0,
            "the failure rates add up to more than 1"
        );
        anyhow::ensure!(
            self.min_workers >= 1 && self.min_workers <= self.max_workers,
            "need 1 <= --min-workers <= --max-workers"
        );
        anyhow::ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        Ok(())
    }
}

/// The demo's router: its own queue names, the configured dead-letter suffix.
pub fn demo_router(config: &MessagingConfig) -> anyhow::Result<NamespaceQueueRouter> {
    Ok(NamespaceQueueRouter::new(
        "demo_{namespace}_queue",
        &config.queues.dead_letter_queue_suffix,
    )?)
}

/// What the main job runs on.
pub struct Connected {
    pub config: MessagingConfig,
    /// The provider wrapped in the resilience stack.
    pub resilient: Resilient,
    pub store: Arc<dyn TaskStore>,
}

impl Connected {
    pub fn messaging(&self) -> &Arc<dyn MessagingService> {
        &self.resilient.service
    }
}

/// The service (wrapped as retry -> circuit breaker -> provider) and where task state lives:
/// PostgreSQL next to the queues for PGMQ (state changes and their messages in one
/// transaction, each passing the same breaker), process memory for the others (sending
/// through the wrapped service).
pub async fn connect_with_store(global: &GlobalOpts) -> anyhow::Result<Connected> {
    let config = global.load_config()?;
    #[cfg(feature = "pgmq")]
    if config.provider == tasker_messaging::ProviderKind::Pgmq {
        use tasker_messaging::{PgmqMessageService, PgmqSettings};
        use tasker_orchestration::workflow::PgTaskStore;
        let pgmq = Arc::new(PgmqMessageService::new(PgmqSettings::from_config(
            &config,
        )?)?);
        pgmq.initialize()
            .await
            .context("starting the pgmq provider")?;
        let resilient = wrap(pgmq.clone(), &config);
        let store = PgTaskStore::new(pgmq)
            .await
            .context("preparing the task table")?
            .with_resilience(resilient.breaker.clone(), resilient.ride.clone());
        return Ok(Connected {
            config,
            resilient,
            store: Arc::new(store),
        });
    }
    // The bare provider: `wrap` below puts the orchestration's own retry and breaker on it
    // (build_service would add the configured ones a second time).
    let provider = tasker_messaging::create_service(&config)
        .with_context(|| format!("building the {} provider", config.provider))?;
    provider
        .initialize()
        .await
        .with_context(|| format!("starting the {} provider", config.provider))?;
    let resilient = wrap(provider, &config);
    let store: Arc<dyn TaskStore> = Arc::new(InMemoryTaskStore::new(resilient.service.clone()));
    Ok(Connected {
        config,
        resilient,
        store,
    })
}

pub async fn run(global: &GlobalOpts, args: DemoArgs) -> anyhow::Result<()> {
    args.validate()?;
    let connected = connect_with_store(global).await?;
    let (config, messaging, store) = (
        connected.config.clone(),
        connected.messaging().clone(),
        connected.store.clone(),
    );
    let ride = connected.resilient.ride.clone();
    let router = demo_router(&config)?;
    let queues = WorkflowQueues {
        router: router.clone(),
    };
    let max_attempts = DemoConfig::default().max_attempts;
    ride.run("create queues", None, || {
        create_workflow_queues(&*messaging, &ORDER_FULFILLMENT, &queues, max_attempts)
    })
    .await?;
    for queue in queues.all(&ORDER_FULFILLMENT)? {
        // Leftovers of an interrupted run would skew the counts.
        let dlq = messaging.dead_letter_queue_name(&queue)?;
        for q in [&queue, &dlq] {
            ride.run("purge", None, || messaging.purge_queue(q)).await?;
        }
    }
    let demo = DemoConfig {
        tasks: args.tasks as usize,
        concurrency: args.concurrency,
        transient_failure_rate: args.transient_failure_rate,
        permanent_failure_rate: args.permanent_failure_rate,
        min_workers: args.min_workers,
        max_workers: args.max_workers,
        batch_size: args.batch_size,
        step_work: Duration::from_millis(args.step_work_ms),
        seed: args.seed,
        timeout: Duration::from_secs(args.timeout_secs),
        router,
        resilience: Some(connected.resilient.clone()),
        ..DemoConfig::default()
    };
    let bar = crate::progress::bar(crate::progress::visible(args.json), args.tasks, "tasks");
    let summary: DemoSummary = run_demo(messaging.clone(), store, demo, &|done, _| {
        bar.set_position(done)
    })
    .await
    .with_context(|| format!("running the demo on {}", config.provider))?;
    bar.finish_and_clear();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        outln!(
            "order fulfilment: {} tasks x {} steps",
            summary.tasks,
            ORDER_FULFILLMENT.steps.len()
        )?;
        out!("{summary}")?;
    }
    let _ = messaging.shutdown().await;
    Ok(())
}
