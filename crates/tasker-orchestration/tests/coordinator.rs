//! The coordinator against the in-memory provider behind a fault-injecting wrapper: health
//! aggregation, backpressure, budget-bounded scaling, and no leaks after drop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tasker_messaging::resilience::{
    FaultInjectingService, GlobalBackpressureController, PressureLevel, ResourceBudget,
};
use tasker_messaging::BackpressureConfig;
use tasker_messaging::{
    InMemoryMessageService, MessagingService, MessagingServiceExt, QueueName, QueuedMessage,
    ResourceRequirements, StepMessage,
};
use tasker_orchestration::coordinator::Resilience;
use tasker_orchestration::{
    CoordinatorConfig, ExecutorConfig, ExecutorPool, Handled, HandlerError, MessageHandler,
    OrchestrationLoopCoordinator, Pool, PoolConfig,
};

struct Slow {
    work: Duration,
    seen: AtomicU64,
}

#[async_trait]
impl MessageHandler<StepMessage> for Slow {
    async fn handle(&self, _m: &QueuedMessage<StepMessage>) -> Result<Handled, HandlerError> {
        tokio::time::sleep(self.work).await;
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(Handled::Done)
    }
}

async fn queue_with(messaging: &Arc<dyn MessagingService>, name: &str, n: usize) -> QueueName {
    let q = QueueName::new(name).unwrap();
    messaging.create_queue(&q).await.unwrap();
    let steps: Vec<_> = (0..n).map(|_| StepMessage::random()).collect();
    if n > 0 {
        messaging.send_messages(&q, &steps).await.unwrap();
    }
    q
}

fn pool(
    messaging: &Arc<dyn MessagingService>,
    q: &QueueName,
    handler: Arc<Slow>,
    max: usize,
) -> Arc<dyn Pool> {
    Arc::new(ExecutorPool::new(
        q.as_str(),
        q.clone(),
        messaging.clone(),
        handler,
        PoolConfig {
            min_workers: 1,
            max_workers: max,
            executor: ExecutorConfig {
                batch_size: 10,
                visibility_timeout: Duration::from_secs(3600),
                ..ExecutorConfig::default()
            },
            ..PoolConfig::default()
        },
    ))
}

fn slow(ms: u64) -> Arc<Slow> {
    Arc::new(Slow {
        work: Duration::from_millis(ms),
        seen: AtomicU64::new(0),
    })
}

#[tokio::test(start_paused = true)]
async fn health_follows_the_backend_down_and_back_through_degraded() {
    let faulty = Arc::new(FaultInjectingService::new(Arc::new(
        InMemoryMessageService::default(),
    )));
    let control = faulty.control();
    let messaging: Arc<dyn MessagingService> = faulty;
    let q = queue_with(&messaging, "coord_health", 0).await;
    let coordinator = OrchestrationLoopCoordinator::new(
        messaging.clone(),
        vec![pool(&messaging, &q, slow(0), 2)],
        CoordinatorConfig::default(),
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(coordinator.tick().await.health.name());
    }
    assert_eq!(seen.last(), Some(&"healthy"), "{seen:?}");
    control.fail_always();
    let mut down = Vec::new();
    for _ in 0..3 {
        down.push(coordinator.tick().await.health.name());
    }
    assert_eq!(down.last(), Some(&"unhealthy"), "{down:?}");
    control.heal();
    let mut up = Vec::new();
    for _ in 0..3 {
        up.push(coordinator.tick().await.health.name());
    }
    assert_eq!(
        up.first(),
        Some(&"degraded"),
        "recovery goes through degraded: {up:?}"
    );
    assert_eq!(up.last(), Some(&"healthy"), "{up:?}");
    coordinator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_deep_queue_scales_up_but_the_budget_caps_every_pool_together() {
    let messaging: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
    let qa = queue_with(&messaging, "coord_budget_a", 2_000).await;
    let qb = queue_with(&messaging, "coord_budget_b", 2_000).await;
    // 3 MiB for extra workers at 1 MiB each, shared by both pools.
    let budget = ResourceBudget::with_totals(None, Some(3));
    let coordinator = OrchestrationLoopCoordinator::with_resilience(
        messaging.clone(),
        vec![
            pool(&messaging, &qa, slow(50), 8),
            pool(&messaging, &qb, slow(50), 8),
        ],
        CoordinatorConfig {
            target_depth_per_worker: 100,
            worker_requirements: ResourceRequirements {
                db_connections: 0,
                memory_mb: 1,
            },
            ..CoordinatorConfig::default()
        },
        Resilience {
            budget: Some(budget.clone()),
            ..Resilience::default()
        },
    );
    coordinator.start().await;
    let status = coordinator.tick().await;
    let workers: usize = status.pools.iter().map(|p| p.workers).sum();
    assert_eq!(
        workers,
        2 + 3,
        "one worker each plus the 3 the budget allows: {status:?}"
    );
    assert_eq!(budget.snapshot().memory_mb_used, 3);
    coordinator.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn critical_pressure_shrinks_batches_and_holds_scaling() {
    let messaging: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
    let q = queue_with(&messaging, "coord_pressure", 5_000).await;
    let controller = GlobalBackpressureController::new(BackpressureConfig {
        max_queue_depth: 1_000,
        min_dwell_ms: 0,
        ..BackpressureConfig::default()
    });
    let the_pool = pool(&messaging, &q, slow(10), 8);
    let coordinator = OrchestrationLoopCoordinator::with_resilience(
        messaging.clone(),
        vec![the_pool.clone()],
        CoordinatorConfig::default(),
        Resilience {
            backpressure: Some(controller.clone()),
            ..Resilience::default()
        },
    );
    coordinator.start().await;
    // One level per sample: elevated (one more worker at most), then critical.
    let first = coordinator.tick().await;
    assert_eq!(first.pressure, PressureLevel::Elevated);
    assert_eq!(
        first.pools[0].workers, 2,
        "elevated pressure adds one worker at most"
    );
    let second = coordinator.tick().await;
    assert_eq!(second.pressure, PressureLevel::Critical);
    let third = coordinator.tick().await;
    assert_eq!(
        third.pools[0].workers, 2,
        "no scale-up under critical pressure"
    );
    assert_eq!(
        controller.batch_size_for(the_pool.configured_batch_size()),
        1
    );
    coordinator.shutdown().await;
}

#[tokio::test]
async fn dropping_the_coordinator_releases_everything() {
    let messaging: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
    let q = queue_with(&messaging, "coord_drop", 0).await;
    let coordinator = OrchestrationLoopCoordinator::with_resilience(
        messaging.clone(),
        vec![pool(&messaging, &q, slow(0), 2)],
        CoordinatorConfig {
            interval: Duration::from_millis(20),
            ..CoordinatorConfig::default()
        },
        Resilience::default(),
    );
    coordinator.start().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(Arc::strong_count(&messaging) > 1);
    drop(coordinator);
    // The loop holds a Weak and the workers stop at their next wake-up (idle_wait 100 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        Arc::strong_count(&messaging),
        1,
        "a task outlived the coordinator"
    );
}

/// An idle process must not load the backend: with every queue empty the control loop looks
/// less and less often (up to `idle_interval`), the pools' idle waits grow too, and a message
/// that arrives still gets the loop's attention at once (the pool wakes it), so scaling
/// follows a burst without waiting for the slow tick.
#[tokio::test(start_paused = true)]
async fn an_idle_coordinator_slows_down_and_wakes_on_work() {
    let faulty = Arc::new(FaultInjectingService::new(Arc::new(
        InMemoryMessageService::default(),
    )));
    let control = faulty.control();
    let messaging: Arc<dyn MessagingService> = faulty;
    let q = queue_with(&messaging, "coord_idle", 0).await;
    let handler = slow(20);
    let coordinator = OrchestrationLoopCoordinator::new(
        messaging.clone(),
        vec![pool(&messaging, &q, handler.clone(), 4)],
        CoordinatorConfig::default(),
    );
    coordinator.start().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let warm = control.calls();
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Idle for a minute at the caps: about 6 looks (stats + health) and 12 receives, where
    // a 250 ms loop and 100 ms waits made about 1,300 calls.
    let idle_calls = control.calls() - warm;
    assert!(
        idle_calls <= 40,
        "{idle_calls} backend calls in a minute idle"
    );
    messaging
        .send_messages(
            &q,
            &(0..1_000)
                .map(|_| StepMessage::random())
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    // The pool's first receive wakes the loop, which sees the depth and scales up well
    // before its next slow tick (up to 10 s away).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let workers = coordinator.status().map(|s| s.pools[0].workers);
    assert!(
        workers > Some(1),
        "not scaled up within 500 ms: {workers:?}"
    );
    coordinator.shutdown().await;
}
