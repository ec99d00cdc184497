//! The sample workflow end to end on the in-memory provider: every step accounted for, dead
//! letters exactly where failures were injected, nothing left invisible.

mod common;

use std::sync::Arc;

use tasker_messaging::{InMemoryMessageService, MessagingService};
use tasker_orchestration::workflow::{DemoConfig, InMemoryTaskStore};

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
