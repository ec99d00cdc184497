//! The sample workflow end to end: every step accounted for, dead letters exactly where
//! failures were injected, nothing left invisible.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tasker_messaging::{
    InMemoryMessageService, MessagingService, MessagingServiceExt, StepMessage,
};
use tasker_orchestration::workflow::model::StepStatus;
use tasker_orchestration::workflow::{
    run_demo, DemoConfig, InMemoryTaskStore, TaskStatus, TaskStore, WorkflowQueues,
    ORDER_FULFILLMENT,
};

async fn check_run(messaging: Arc<dyn MessagingService>, store: Arc<dyn TaskStore>, tasks: usize) {
    let config = DemoConfig {
        tasks,
        transient_failure_rate: 0.05,
        permanent_failure_rate: 0.01,
        ..DemoConfig::default()
    };
    let summary = run_demo(messaging.clone(), store.clone(), config.clone(), &|_, _| {})
        .await
        .expect("the demo finishes");
    println!("{summary}");
    assert_eq!(summary.tasks_completed + summary.tasks_failed, tasks as u64);
    assert_eq!(
        summary.messages_left, 0,
        "messages left visible or in flight"
    );

    let mut injected_permanent = HashSet::new();
    let mut injected_transient = 0;
    for task in store.all_tasks().await.unwrap() {
        let mut reached = true;
        let mut failed = false;
        for step in &task.steps {
            if !reached {
                assert_eq!(
                    step.status,
                    StepStatus::Pending,
                    "a step after a failure ran"
                );
                continue;
            }
            if step.plan.permanent {
                assert_eq!(
                    step.status,
                    StepStatus::Failed,
                    "injected failure not recorded"
                );
                assert_eq!(step.attempts, 1, "a permanent failure is not retried");
                injected_permanent.insert(step.step_uuid);
                failed = true;
                reached = false;
            } else {
                assert_eq!(step.status, StepStatus::Completed, "{task:?}");
                assert_eq!(
                    step.attempts,
                    step.plan.transient + 1,
                    "retries differ from injected"
                );
                injected_transient += step.plan.transient;
            }
        }
        let expected = if failed {
            TaskStatus::Failed
        } else {
            TaskStatus::Complete
        };
        assert_eq!(task.status, expected);
    }
    assert!(
        !injected_permanent.is_empty() && injected_transient > 0,
        "the run injected failures"
    );
    assert_eq!(summary.retries, u64::from(injected_transient));

    // The dead-letter queues hold exactly the steps with injected permanent failures.
    let queues = WorkflowQueues {
        router: config.router.clone(),
    };
    let mut dead = HashSet::new();
    for namespace in ORDER_FULFILLMENT.namespaces() {
        let queue = queues.namespace(namespace).unwrap();
        let dlq = messaging.dead_letter_queue_name(&queue).unwrap();
        loop {
            let batch = messaging
                .receive_messages::<StepMessage>(&dlq, 1000, Duration::from_secs(60))
                .await
                .unwrap();
            if batch.is_empty() {
                break;
            }
            for m in batch {
                assert!(dead.insert(m.message.step_uuid), "dead-lettered twice");
            }
        }
    }
    assert_eq!(dead, injected_permanent);
    assert_eq!(summary.dead_letters, dead.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_on_the_in_memory_provider() {
    let messaging: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
    let store = Arc::new(InMemoryTaskStore::new(messaging.clone()));
    check_run(messaging, store, 10_000).await;
}
