//! Task and step state, and the pure transitions between states.
//!
//! The state is the source of truth (PostgreSQL in production); messages only say which task
//! or step to look at (three UUIDs). Each transition changes the state and returns the messages
//! it causes, which the store sends in the same transaction where the backend allows. Every
//! transition is idempotent: applied to a state it already produced, it changes nothing and
//! sends nothing, so a redelivered message is harmless.

use serde::{Deserialize, Serialize};
use tasker_messaging::{
    ExecutorType, MessageRouter, MessagingError, NamespaceQueueRouter, OutgoingMessage, QueueName,
    StepMessage,
};
use uuid::Uuid;

/// A step of a workflow definition.
#[derive(Debug, Clone, Copy)]
pub struct StepDef {
    pub name: &'static str,
    pub namespace: &'static str,
    /// Indexes of the steps that must complete first.
    pub depends_on: &'static [usize],
}

/// A workflow: steps and their dependencies.
#[derive(Debug, Clone, Copy)]
pub struct WorkflowDef {
    pub name: &'static str,
    pub steps: &'static [StepDef],
}

/// The sample: order fulfilment, four steps in a line across three namespaces.
pub const ORDER_FULFILLMENT: WorkflowDef = WorkflowDef {
    name: "order_fulfillment",
    steps: &[
        StepDef {
            name: "validate_order",
            namespace: "fulfillment",
            depends_on: &[],
        },
        StepDef {
            name: "reserve_inventory",
            namespace: "inventory",
            depends_on: &[0],
        },
        StepDef {
            name: "charge_payment",
            namespace: "payments",
            depends_on: &[1],
        },
        StepDef {
            name: "ship_order",
            namespace: "fulfillment",
            depends_on: &[2],
        },
    ],
};

impl WorkflowDef {
    /// The namespaces its steps run in, each once.
    pub fn namespaces(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for s in self.steps {
            if !out.contains(&s.namespace) {
                out.push(s.namespace);
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    Requested,
    Initialized,
    Claimed,
    InProgress,
    Finalizing,
    Complete,
    Failed,
}

impl TaskStatus {
    pub fn is_final(self) -> bool {
        matches!(self, TaskStatus::Complete | TaskStatus::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    Pending,
    Enqueued,
    Running,
    Completed,
    /// Failed for good; its message was dead-lettered.
    Failed,
}

/// Failures injected into a step, decided when the task is created (so a test knows exactly
/// where they are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailurePlan {
    /// The first `transient` attempts fail with a retryable error.
    pub transient: u32,
    /// Every attempt fails with a permanent error.
    pub permanent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    pub step_uuid: Uuid,
    pub index: usize,
    pub status: StepStatus,
    /// Attempts made, counted here (one per delivery that ran the work), not by the provider's
    /// receive count: redeliveries caused by outages do not use attempts up.
    pub attempts: u32,
    pub plan: FailurePlan,
    /// The delivery (receipt) of the last attempt counted, so that the same delivery applied
    /// twice (a transaction retried after a lost COMMIT) counts once.
    #[serde(default)]
    pub last_delivery: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    pub task_uuid: Uuid,
    pub correlation_id: Uuid,
    pub status: TaskStatus,
    /// Microseconds since the Unix epoch.
    pub requested_at_us: i64,
    pub finished_at_us: Option<i64>,
    pub steps: Vec<StepState>,
}

/// What a worker should do with a step delivery, decided by `attempt_step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDecision {
    /// Run it and complete it.
    Run,
    /// Fail this attempt with a retryable error (injected transient failure).
    FailTransiently,
    /// Fail for good (injected permanent failure): the step is recorded failed.
    FailPermanently,
    /// Failed transiently with no attempt left: the step is recorded failed.
    GaveUp,
    /// Already finished: acknowledge and do nothing.
    AlreadyDone,
    /// Not enqueued in the state yet: its message went out but the change that enqueued it is
    /// still being written (a send whose answer was lost, retried). Try again shortly; not an
    /// attempt.
    NotYet,
}

/// The messages a transition causes: (queue, message).
pub type Effects = Vec<(QueueName, OutgoingMessage)>;

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Queues of the workflow, from the router.
#[derive(Debug, Clone)]
pub struct WorkflowQueues {
    pub router: NamespaceQueueRouter,
}

impl WorkflowQueues {
    pub fn executor(&self, executor: ExecutorType) -> QueueName {
        self.router.get_executor_queue(executor)
    }

    pub fn namespace(&self, namespace: &str) -> Result<QueueName, MessagingError> {
        self.router.route_to_queue(namespace)
    }

    /// Every queue the workflow uses: executor queues, then namespace queues.
    pub fn all(&self, workflow: &WorkflowDef) -> Result<Vec<QueueName>, MessagingError> {
        let mut out: Vec<QueueName> = ExecutorType::ALL
            .iter()
            .map(|e| self.executor(*e))
            .collect();
        for ns in workflow.namespaces() {
            out.push(self.namespace(ns)?);
        }
        Ok(out)
    }
}

impl TaskState {
    /// A new task of `workflow` with its failure plan per step.
    pub fn new(workflow: &WorkflowDef, plans: impl IntoIterator<Item = FailurePlan>) -> Self {
        let mut plans = plans.into_iter();
        TaskState {
            task_uuid: Uuid::now_v7(),
            correlation_id: Uuid::now_v7(),
            status: TaskStatus::Requested,
            requested_at_us: now_us(),
            finished_at_us: None,
            steps: (0..workflow.steps.len())
                .map(|index| StepState {
                    step_uuid: Uuid::now_v7(),
                    index,
                    status: StepStatus::Pending,
                    attempts: 0,
                    plan: plans.next().unwrap_or_default(),
                    last_delivery: None,
                })
                .collect(),
        }
    }

    fn message(&self, step_uuid: Uuid) -> OutgoingMessage {
        let step = StepMessage::new(self.task_uuid, step_uuid, self.correlation_id);
        // A StepMessage always encodes; fall back to an empty payload rather than panic.
        OutgoingMessage::json(&step).unwrap_or_else(|_| OutgoingMessage::new(Vec::new()))
    }

    fn task_message(&self, queue: QueueName) -> (QueueName, OutgoingMessage) {
        (queue, self.message(Uuid::nil()))
    }

    pub fn step(&self, step_uuid: Uuid) -> Option<&StepState> {
        self.steps.iter().find(|s| s.step_uuid == step_uuid)
    }

    fn step_mut(&mut self, step_uuid: Uuid) -> Option<&mut StepState> {
        self.steps.iter_mut().find(|s| s.step_uuid == step_uuid)
    }

    /// The request message that starts the task.
    pub fn request(&self, queues: &WorkflowQueues) -> Effects {
        vec![self.task_message(queues.executor(ExecutorType::TaskRequestProcessor))]
    }

    /// TaskRequestProcessor: Requested -> Initialized.
    pub fn initialize(&mut self, queues: &WorkflowQueues) -> Effects {
        if self.status != TaskStatus::Requested {
            return Vec::new();
        }
        self.status = TaskStatus::Initialized;
        vec![self.task_message(queues.executor(ExecutorType::TaskClaimer))]
    }

    /// TaskClaimer: Initialized -> Claimed.
    pub fn claim(&mut self, queues: &WorkflowQueues) -> Effects {
        if self.status != TaskStatus::Initialized {
            return Vec::new();
        }
        self.status = TaskStatus::Claimed;
        vec![self.task_message(queues.executor(ExecutorType::StepEnqueuer))]
    }

    /// StepEnqueuer: Claimed -> InProgress, enqueuing the steps whose dependencies are met.
    pub fn enqueue_ready_steps(
        &mut self,
        workflow: &WorkflowDef,
        queues: &WorkflowQueues,
    ) -> Result<Effects, MessagingError> {
        if self.status != TaskStatus::Claimed {
            return Ok(Vec::new());
        }
        self.status = TaskStatus::InProgress;
        self.enqueue_newly_ready(workflow, queues)
    }

    fn enqueue_newly_ready(
        &mut self,
        workflow: &WorkflowDef,
        queues: &WorkflowQueues,
    ) -> Result<Effects, MessagingError> {
        let completed: Vec<bool> = self
            .steps
            .iter()
            .map(|s| s.status == StepStatus::Completed)
            .collect();
        let mut effects = Vec::new();
        for i in 0..self.steps.len() {
            let def = &workflow.steps[self.steps[i].index];
            if self.steps[i].status == StepStatus::Pending
                && def.depends_on.iter().all(|d| completed[*d])
            {
                self.steps[i].status = StepStatus::Enqueued;
                let queue = queues.namespace(def.namespace)?;
                effects.push((queue, self.message(self.steps[i].step_uuid)));
            }
        }
        Ok(effects)
    }

    /// Worker: records an attempt of a step whose work just ran, delivered as `delivery` (the
    /// message's receipt), with the outcome its failure plan says. A success completes the step
    /// and reports it; a permanent failure, or a transient one at `max_attempts`, records the
    /// step failed and reports that; all in the same change. Returns the decision and the
    /// attempt number. Applied again for the same delivery, it counts nothing new and returns
    /// the same decision.
    pub fn attempt_step(
        &mut self,
        step_uuid: Uuid,
        delivery: &str,
        max_attempts: u32,
        queues: &WorkflowQueues,
    ) -> (StepDecision, u32, Effects) {
        let Some(step) = self.step_mut(step_uuid) else {
            return (StepDecision::FailPermanently, 0, Vec::new());
        };
        let decision = match step.status {
            StepStatus::Completed => StepDecision::AlreadyDone,
            StepStatus::Pending => StepDecision::NotYet,
            StepStatus::Failed => StepDecision::FailPermanently,
            StepStatus::Enqueued | StepStatus::Running => {
                if step.last_delivery.as_deref() != Some(delivery) {
                    step.attempts += 1;
                    step.last_delivery = Some(delivery.to_owned());
                }
                step.status = StepStatus::Running;
                if step.plan.permanent {
                    StepDecision::FailPermanently
                } else if step.attempts <= step.plan.transient {
                    if step.attempts >= max_attempts {
                        StepDecision::GaveUp
                    } else {
                        StepDecision::FailTransiently
                    }
                } else {
                    StepDecision::Run
                }
            }
        };
        let attempt = step.attempts;
        let effects = match decision {
            StepDecision::Run => self.finish_step(step_uuid, true, queues),
            StepDecision::FailPermanently | StepDecision::GaveUp => {
                self.finish_step(step_uuid, false, queues)
            }
            _ => Vec::new(),
        };
        (decision, attempt, effects)
    }

    /// Worker: the step finished (`completed`) or failed for good; report to the results queue.
    pub fn finish_step(
        &mut self,
        step_uuid: Uuid,
        completed: bool,
        queues: &WorkflowQueues,
    ) -> Effects {
        let Some(step) = self.step_mut(step_uuid) else {
            return Vec::new();
        };
        if matches!(step.status, StepStatus::Completed | StepStatus::Failed) {
            return Vec::new();
        }
        step.status = if completed {
            StepStatus::Completed
        } else {
            StepStatus::Failed
        };
        vec![(
            queues.executor(ExecutorType::StepResultProcessor),
            self.message(step_uuid),
        )]
    }

    /// StepResultProcessor: enqueue what became ready, or hand the task to the finalizer when
    /// every step is done or one failed.
    pub fn process_result(
        &mut self,
        workflow: &WorkflowDef,
        queues: &WorkflowQueues,
    ) -> Result<Effects, MessagingError> {
        if self.status != TaskStatus::InProgress {
            return Ok(Vec::new());
        }
        let failed = self.steps.iter().any(|s| s.status == StepStatus::Failed);
        let all_done = self.steps.iter().all(|s| s.status == StepStatus::Completed);
        if failed || all_done {
            let busy = self
                .steps
                .iter()
                .any(|s| matches!(s.status, StepStatus::Enqueued | StepStatus::Running));
            if busy {
                // Wait for the other branches' results before finalizing.
                return Ok(Vec::new());
            }
            self.status = TaskStatus::Finalizing;
            return Ok(vec![
                self.task_message(queues.executor(ExecutorType::TaskFinalizer))
            ]);
        }
        self.enqueue_newly_ready(workflow, queues)
    }

    /// TaskFinalizer: Finalizing -> Complete or Failed.
    pub fn finalize(&mut self) -> Effects {
        if self.status != TaskStatus::Finalizing {
            return Vec::new();
        }
        let failed = self.steps.iter().any(|s| s.status == StepStatus::Failed);
        self.status = if failed {
            TaskStatus::Failed
        } else {
            TaskStatus::Complete
        };
        self.finished_at_us = Some(now_us());
        Vec::new()
    }

    /// Request-to-finalization latency, once final.
    pub fn latency_us(&self) -> Option<i64> {
        self.finished_at_us.map(|f| f - self.requested_at_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues() -> WorkflowQueues {
        WorkflowQueues {
            router: NamespaceQueueRouter::default(),
        }
    }

    #[test]
    fn a_task_walks_the_linear_workflow_and_each_transition_is_idempotent() {
        let (w, q) = (&ORDER_FULFILLMENT, queues());
        let mut t = TaskState::new(w, []);
        assert_eq!(t.request(&q)[0].0.as_str(), "task_requests_queue");
        assert_eq!(t.initialize(&q)[0].0.as_str(), "ready_tasks_queue");
        assert!(t.initialize(&q).is_empty());
        assert_eq!(t.claim(&q)[0].0.as_str(), "claimed_tasks_queue");
        assert!(t.claim(&q).is_empty());
        let first = t.enqueue_ready_steps(w, &q).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0.as_str(), "fulfillment_queue");
        assert!(t.enqueue_ready_steps(w, &q).unwrap().is_empty());
        let next_queues = [
            "inventory_queue",
            "payments_queue",
            "fulfillment_queue",
            "task_finalizations_queue",
        ];
        for (i, expected) in next_queues.iter().enumerate() {
            let step = t.steps[i].step_uuid;
            let (decision, attempt, effects) = t.attempt_step(step, "d1", 3, &q);
            assert_eq!((decision, attempt), (StepDecision::Run, 1));
            assert_eq!(effects[0].0.as_str(), "step_results_queue");
            assert!(t.finish_step(step, true, &q).is_empty());
            let (again, _, none) = t.attempt_step(step, "d2", 3, &q);
            assert_eq!((again, none.len()), (StepDecision::AlreadyDone, 0));
            let next = t.process_result(w, &q).unwrap();
            assert_eq!(next[0].0.as_str(), *expected);
        }
        t.finalize();
        assert_eq!(t.status, TaskStatus::Complete);
        assert!(t.latency_us().is_some());
    }

    #[test]
    fn injected_failures_decide_the_attempts() {
        let (w, q) = (&ORDER_FULFILLMENT, queues());
        let plans = [
            FailurePlan {
                transient: 2,
                permanent: false,
            },
            FailurePlan {
                transient: 0,
                permanent: true,
            },
        ];
        let mut t = TaskState::new(w, plans);
        t.initialize(&q);
        t.claim(&q);
        t.enqueue_ready_steps(w, &q).unwrap();
        let s0 = t.steps[0].step_uuid;
        assert_eq!(
            t.attempt_step(s0, "a", 3, &q).0,
            StepDecision::FailTransiently
        );
        // The same delivery again (a retried transaction): not a new attempt.
        assert_eq!(
            t.attempt_step(s0, "a", 3, &q).0,
            StepDecision::FailTransiently
        );
        assert_eq!(t.steps[0].attempts, 1);
        assert_eq!(
            t.attempt_step(s0, "b", 3, &q).0,
            StepDecision::FailTransiently
        );
        assert_eq!(t.attempt_step(s0, "c", 3, &q).0, StepDecision::Run);
        assert_eq!(t.steps[0].attempts, 3);
        t.process_result(w, &q).unwrap();
        let s1 = t.steps[1].step_uuid;
        let (decision, _, report) = t.attempt_step(s1, "a", 3, &q);
        assert_eq!(decision, StepDecision::FailPermanently);
        assert_eq!(
            report.len(),
            1,
            "the failure is reported in the same change"
        );
        assert!(t.finish_step(s1, false, &q).is_empty());
        let fin = t.process_result(w, &q).unwrap();
        assert_eq!(fin[0].0.as_str(), "task_finalizations_queue");
        t.finalize();
        assert_eq!(t.status, TaskStatus::Failed);
        assert_eq!(t.steps[2].status, StepStatus::Pending, "never reached");
        let s2 = t.steps[2].step_uuid;
        let (decision, _, none) = t.attempt_step(s2, "early", 3, &q);
        assert_eq!((decision, none.len()), (StepDecision::NotYet, 0));
        assert_eq!(
            t.steps[2].status,
            StepStatus::Pending,
            "an early delivery changes nothing"
        );
    }

    #[test]
    fn transient_failures_past_max_attempts_give_up_once() {
        let (w, q) = (&ORDER_FULFILLMENT, queues());
        let plans = [FailurePlan {
            transient: 5,
            permanent: false,
        }];
        let mut t = TaskState::new(w, plans);
        t.initialize(&q);
        t.claim(&q);
        t.enqueue_ready_steps(w, &q).unwrap();
        let s0 = t.steps[0].step_uuid;
        assert_eq!(
            t.attempt_step(s0, "a", 2, &q).0,
            StepDecision::FailTransiently
        );
        let (decision, attempt, report) = t.attempt_step(s0, "b", 2, &q);
        assert_eq!(
            (decision, attempt, report.len()),
            (StepDecision::GaveUp, 2, 1)
        );
        assert_eq!(t.steps[0].status, StepStatus::Failed);
    }

    /// Every transition, applied a second time to the state it produced (what a retry after a
    /// lost COMMIT does), changes nothing and sends nothing.
    #[test]
    fn every_transition_applied_twice_is_applied_once() {
        let (w, q) = (&ORDER_FULFILLMENT, queues());
        let plans = [FailurePlan {
            transient: 1,
            permanent: false,
        }];
        let mut t = TaskState::new(w, plans);
        type Step<'a> = Box<dyn Fn(&mut TaskState) -> Effects + 'a>;
        let mut transitions: Vec<(&str, Step)> = vec![
            ("initialize", Box::new(|t| t.initialize(&q))),
            ("claim", Box::new(|t| t.claim(&q))),
            (
                "enqueue",
                Box::new(|t| t.enqueue_ready_steps(w, &q).unwrap()),
            ),
        ];
        let q = &q;
        for i in 0..w.steps.len() {
            let step = t.steps[i].step_uuid;
            let first = format!("first-{i}");
            let second = format!("second-{i}");
            transitions.push((
                "attempt (transient failure on step 0)",
                Box::new(move |t| t.attempt_step(step, &first, 3, q).2),
            ));
            transitions.push((
                "attempt",
                Box::new(move |t| t.attempt_step(step, &second, 3, q).2),
            ));
            transitions.push(("result", Box::new(|t| t.process_result(w, q).unwrap())));
        }
        transitions.push(("finalize", Box::new(|t| t.finalize())));
        for (name, apply) in &transitions {
            apply(&mut t);
            let once = t.clone();
            let effects = apply(&mut t);
            assert_eq!(t, once, "{name} applied twice changed the state again");
            assert!(effects.is_empty(), "{name} applied twice sent again");
        }
        assert_eq!(t.status, TaskStatus::Complete);
        assert_eq!(t.steps[0].attempts, 2);
    }
}
