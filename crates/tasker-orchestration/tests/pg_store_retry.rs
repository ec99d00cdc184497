//! The PostgreSQL task store under repeats: what a retry after a lost COMMIT does is run the
//! same transaction again on the committed state. Inserting the same task twice stores it once
//! and requests it once; applying the same transition twice changes the state once and sends
//! its message once; a step attempt for the same delivery counts once. Uses the machine's
//! PostgreSQL (`DATABASE_URL`); fails when it is unreachable under CI=true, skips otherwise.

use std::sync::Arc;

use tasker_messaging::{
    MessagingService, NamespaceQueueRouter, PgmqMessageService, PgmqSettings, SecretUrl,
};
use tasker_orchestration::workflow::model::StepStatus;
use tasker_orchestration::workflow::store::Mutation;
use tasker_orchestration::workflow::{
    PgTaskStore, TaskState, TaskStatus, TaskStore, WorkflowQueues, ORDER_FULFILLMENT,
};

fn database_url() -> SecretUrl {
    SecretUrl::new(
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".into()),
    )
}

async fn pgmq() -> Option<Arc<PgmqMessageService>> {
    let settings = PgmqSettings::new(database_url())
        .with_pool_size(4)
        .with_install_sql(true);
    let svc = PgmqMessageService::new(settings).expect("valid settings");
    match svc.initialize().await {
        Ok(()) => Some(Arc::new(svc)),
        Err(e) if e.is_retryable() && std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED: PostgreSQL unreachable ({e}); set CI=true to make this fail");
            None
        }
        Err(e) => panic!("PostgreSQL at {} is not usable: {e}", database_url()),
    }
}

async fn depth(messaging: &dyn MessagingService, queue: &tasker_messaging::QueueName) -> u64 {
    messaging.get_queue_stats(queue).await.unwrap().total()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_transactions_apply_once() {
    let Some(pgmq) = pgmq().await else { return };
    let messaging: Arc<dyn MessagingService> = pgmq.clone();
    let store = PgTaskStore::new(pgmq.clone()).await.expect("task table");
    let prefix = format!("idem{:08x}", rand::random::<u32>());
    let router = NamespaceQueueRouter::new(&format!("{prefix}_{{namespace}}_queue"), "_dlq")
        .expect("valid pattern");
    let queues = WorkflowQueues { router };
    tasker_orchestration::workflow::demo::create_workflow_queues(
        &*messaging,
        &ORDER_FULFILLMENT,
        &queues,
        3,
    )
    .await
    .unwrap();
    let requests = queues.executor(tasker_messaging::ExecutorType::TaskRequestProcessor);
    let ready = queues.executor(tasker_messaging::ExecutorType::TaskClaimer);

    let task = TaskState::new(&ORDER_FULFILLMENT, []);
    let id = task.task_uuid;
    let request = task.request(&queues);
    store
        .insert_task(task.clone(), request.clone())
        .await
        .unwrap();
    store.insert_task(task, request).await.unwrap();
    assert_eq!(store.all_tasks().await.unwrap().len(), 1);
    assert_eq!(depth(&*messaging, &requests).await, 1, "requested once");

    let q = queues.clone();
    let initialize = move || -> Mutation {
        let q = q.clone();
        Box::new(move |t| Ok(t.initialize(&q)))
    };
    let first = store.update_task(id, initialize()).await.unwrap();
    let second = store.update_task(id, initialize()).await.unwrap();
    assert_eq!(first.status, TaskStatus::Initialized);
    assert_eq!(first, second, "applied twice = applied once");
    assert_eq!(depth(&*messaging, &ready).await, 1, "its message sent once");

    // Walk to the first step, then attempt it twice with the same delivery.
    let q = queues.clone();
    store
        .update_task(id, Box::new(move |t| Ok(t.claim(&q))))
        .await
        .unwrap();
    let q = queues.clone();
    store
        .update_task(
            id,
            Box::new(move |t| t.enqueue_ready_steps(&ORDER_FULFILLMENT, &q)),
        )
        .await
        .unwrap();
    let step = first.steps[0].step_uuid;
    for _ in 0..2 {
        let q = queues.clone();
        store
            .update_task(
                id,
                Box::new(move |t| Ok(t.attempt_step(step, "delivery-1", 3, &q).2)),
            )
            .await
            .unwrap();
    }
    let after = store.all_tasks().await.unwrap().remove(0);
    assert_eq!(after.steps[0].attempts, 1, "one delivery, one attempt");
    assert_eq!(after.steps[0].status, StepStatus::Completed);
    let results = queues.executor(tasker_messaging::ExecutorType::StepResultProcessor);
    assert_eq!(depth(&*messaging, &results).await, 1, "reported once");

    store.clear_run().await.unwrap();
    for queue in queues.all(&ORDER_FULFILLMENT).unwrap() {
        messaging.delete_queue(&queue).await.unwrap();
    }
}
