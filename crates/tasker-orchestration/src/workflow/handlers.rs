//! The workflow's executors: each turns one message into one state transition.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tasker_messaging::{ExecutorType, QueuedMessage, StepMessage};

use super::model::{StepDecision, WorkflowDef, WorkflowQueues};
use super::store::{Mutation, StoreError, TaskStore};
use crate::executor::{Handled, HandlerError, MessageHandler};

/// A store that cannot be reached is not a failure of the step: no attempt is counted and the
/// executor waits it out. Anything else the store says is permanent.
fn store_error(error: StoreError) -> HandlerError {
    match error {
        StoreError::NotFound(task) => HandlerError::Permanent(format!("unknown task {task}")),
        e if e.is_retryable() => HandlerError::Unavailable(e.to_string()),
        e => HandlerError::Permanent(e.to_string()),
    }
}

/// An orchestration executor (everything but the namespace workers).
pub struct TransitionHandler {
    executor: ExecutorType,
    store: Arc<dyn TaskStore>,
    workflow: WorkflowDef,
    queues: WorkflowQueues,
}

impl TransitionHandler {
    pub fn new(
        executor: ExecutorType,
        store: Arc<dyn TaskStore>,
        workflow: WorkflowDef,
        queues: WorkflowQueues,
    ) -> Self {
        TransitionHandler {
            executor,
            store,
            workflow,
            queues,
        }
    }
}

#[async_trait]
impl MessageHandler<StepMessage> for TransitionHandler {
    async fn handle(&self, message: &QueuedMessage<StepMessage>) -> Result<Handled, HandlerError> {
        let (workflow, queues) = (self.workflow, self.queues.clone());
        let mutation: Mutation = match self.executor {
            ExecutorType::TaskRequestProcessor => Box::new(move |t| Ok(t.initialize(&queues))),
            ExecutorType::TaskClaimer => Box::new(move |t| Ok(t.claim(&queues))),
            ExecutorType::StepEnqueuer => {
                Box::new(move |t| t.enqueue_ready_steps(&workflow, &queues))
            }
            ExecutorType::StepResultProcessor => {
                Box::new(move |t| t.process_result(&workflow, &queues))
            }
            ExecutorType::TaskFinalizer => Box::new(move |t| Ok(t.finalize())),
        };
        self.store
            .update_task(message.message.task_uuid, mutation)
            .await
            .map_err(store_error)?;
        Ok(Handled::Done)
    }
}

/// A namespace worker: runs steps (here: simulated work with injected failures) and reports
/// each result to the step-results queue.
pub struct StepWorker {
    store: Arc<dyn TaskStore>,
    queues: WorkflowQueues,
    work: Duration,
    max_attempts: u32,
}

impl StepWorker {
    /// A worker giving a step `max_attempts` attempts (counted in the task state).
    pub fn new(
        store: Arc<dyn TaskStore>,
        queues: WorkflowQueues,
        work: Duration,
        max_attempts: u32,
    ) -> Self {
        StepWorker {
            store,
            queues,
            work,
            max_attempts,
        }
    }

    async fn finish(&self, step: &StepMessage, completed: bool) -> Result<(), HandlerError> {
        let (queues, step_uuid) = (self.queues.clone(), step.step_uuid);
        self.store
            .update_task(
                step.task_uuid,
                Box::new(move |t| Ok(t.finish_step(step_uuid, completed, &queues))),
            )
            .await
            .map_err(store_error)?;
        Ok(())
    }
}

#[async_trait]
impl MessageHandler<StepMessage> for StepWorker {
    async fn handle(&self, message: &QueuedMessage<StepMessage>) -> Result<Handled, HandlerError> {
        let step = message.message;
        // The work runs first; its outcome and the report are then one state change.
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        // The receipt names this delivery: the same delivery applied twice counts once.
        let delivery = message.receipt().to_string();
        let (queues, max_attempts) = (self.queues.clone(), self.max_attempts);
        let decision = Arc::new(parking_lot::Mutex::new((StepDecision::AlreadyDone, 0)));
        let out = decision.clone();
        self.store
            .update_task(
                step.task_uuid,
                Box::new(move |t| {
                    let (decision, attempt, effects) =
                        t.attempt_step(step.step_uuid, &delivery, max_attempts, &queues);
                    *out.lock() = (decision, attempt);
                    Ok(effects)
                }),
            )
            .await
            .map_err(store_error)?;
        let (decision, attempt) = *decision.lock();
        match decision {
            StepDecision::AlreadyDone => Ok(Handled::Skipped),
            // The state has not caught up with the message yet: wait for it, as for an outage.
            StepDecision::NotYet => Err(HandlerError::Unavailable(
                "step not enqueued in the task state yet".into(),
            )),
            StepDecision::FailTransiently => Err(HandlerError::RetryableAttempt {
                attempt,
                reason: "injected transient failure".into(),
            }),
            StepDecision::FailPermanently => {
                Err(HandlerError::Permanent("injected permanent failure".into()))
            }
            StepDecision::GaveUp => Err(HandlerError::Permanent(format!(
                "gave up after {attempt} attempts"
            ))),
            StepDecision::Run => Ok(Handled::Done),
        }
    }

    async fn dead_lettering(&self, message: &QueuedMessage<StepMessage>, reason: &str) {
        if let Err(error) = self.finish(&message.message, false).await {
            tracing::error!(step = %message.message.step_uuid, %reason, %error, "could not record a failed step");
        }
    }
}
