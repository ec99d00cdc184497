//! The sample workflow end to end on the in-memory provider: every step accounted for, dead
//! letters exactly where failures were injected, nothing left invisible.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tasker_messaging::{InMemoryMessageService, MessagingService};
use tasker_orchestration::workflow::model::Effects;
use tasker_orchestration::workflow::store::Mutation;
use tasker_orchestration::workflow::{
    run_demo, DemoConfig, InMemoryTaskStore, StoreError, TaskState, TaskStore,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_on_the_in_memory_provider() {
    let messaging: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
    let store = Arc::new(InMemoryTaskStore::new(messaging.clone()));
    let config = DemoConfig {
        tasks: 10_000,
        transient_failure_rate: 0.05,
        permanent_failure_rate: 0.01,
        ..DemoConfig::default()
    };
    common::check_run(messaging, store, config).await;
}

/// The in-memory store with inserts that take 2 ms, so submitting 300 tasks lasts over half a
/// second while the first ones already finish.
struct SlowInserts {
    inner: InMemoryTaskStore,
    inserted: AtomicU64,
}

#[async_trait::async_trait]
impl TaskStore for SlowInserts {
    async fn insert_task(&self, task: TaskState, effects: Effects) -> Result<(), StoreError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.inner.insert_task(task, effects).await?;
        self.inserted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn update_task(
        &self,
        task: uuid::Uuid,
        mutation: Mutation,
    ) -> Result<TaskState, StoreError> {
        self.inner.update_task(task, mutation).await
    }

    async fn all_tasks(&self) -> Result<Vec<TaskState>, StoreError> {
        self.inner.all_tasks().await
    }

    async fn finished_count(&self) -> Result<u64, StoreError> {
        self.inner.finished_count().await
    }

    async fn wait_finished(&self, at_least: u64, timeout: Duration) -> Result<u64, StoreError> {
        self.inner.wait_finished(at_least, timeout).await
    }
}

/// `tasker-mq demo` draws its bar from these calls: they must come while tasks are still
/// being submitted, not only once all of them were (the bar sat at 0 for most of a run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_reported_while_tasks_are_still_being_submitted() {
    let messaging: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
    let store = Arc::new(SlowInserts {
        inner: InMemoryTaskStore::new(messaging.clone()),
        inserted: AtomicU64::new(0),
    });
    let config = DemoConfig {
        tasks: 300,
        transient_failure_rate: 0.0,
        permanent_failure_rate: 0.0,
        ..DemoConfig::default()
    };
    let calls = parking_lot::Mutex::new(Vec::new());
    let watched = store.clone();
    run_demo(messaging, store, config, &|done, _| {
        calls
            .lock()
            .push((watched.inserted.load(Ordering::Relaxed), done));
    })
    .await
    .expect("the demo runs");
    let calls = calls.into_inner();
    let early: Vec<_> = calls
        .iter()
        .filter(|(inserted, _)| *inserted < 300)
        .collect();
    assert!(
        early.len() >= 2,
        "progress reported {} times before every task was submitted: {calls:?}",
        early.len()
    );
    assert!(early.iter().any(|(_, done)| *done > 0), "{calls:?}");
    assert_eq!(calls.last().map(|c| c.1), Some(300));
}
