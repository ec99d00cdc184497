//! Where task state lives, and how a state change and the messages it causes are written
//! together.
//!
//! `update_task` applies a transition to one task and sends the messages it returned. A store
//! over a database does both in one transaction (with PGMQ the messages are rows in the same
//! database), so they commit or roll back together. The in-memory store applies the change
//! under its lock and sends right after: nothing can crash in between that would not also lose
//! the state.
//!
//! Both are safe to retry as a whole after any failure, including one whose outcome is unknown
//! (a connection lost during COMMIT): a transition applied to the state it already produced
//! changes nothing and sends nothing, and `insert_task` of a task already stored only sends
//! its request again. So a repeat can at worst send a duplicate message, which the receiving
//! transition ignores; it never applies a change twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tasker_messaging::{MessagingError, MessagingService};
use uuid::Uuid;

use super::model::{Effects, TaskState};

/// A transition: changes the state, returns the messages to send. `Fn`, not `FnOnce`: a store
/// runs it again when it retries a transaction that did not commit.
pub type Mutation =
    Box<dyn Fn(&mut TaskState) -> Result<Effects, MessagingError> + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("task {0} not found")]
    NotFound(Uuid),
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    /// The backend cannot be reached right now (connection lost, server restarting, pool
    /// exhausted): the same call may work later.
    #[error("store backend unavailable: {0}")]
    Unavailable(String),
    /// Any other backend error (a bad statement, a constraint, bad data): permanent.
    #[error("store backend: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Messaging(e) => e.is_retryable(),
            StoreError::NotFound(_) | StoreError::Backend(_) => false,
        }
    }
}

impl crate::resilient::Transient for StoreError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }
}

/// Task state storage used by the workflow's executors.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Stores a new task and sends `effects` (its request), together.
    async fn insert_task(&self, task: TaskState, effects: Effects) -> Result<(), StoreError>;

    /// Applies `mutation` to the task and sends the messages it returns, together; returns the
    /// state after the change.
    async fn update_task(&self, task: Uuid, mutation: Mutation) -> Result<TaskState, StoreError>;

    /// Every task, for summaries and checks.
    async fn all_tasks(&self) -> Result<Vec<TaskState>, StoreError>;

    /// How many tasks are final (complete or failed).
    async fn finished_count(&self) -> Result<u64, StoreError>;

    /// Waits until at least `at_least` tasks are final, at most `timeout`; returns the count.
    async fn wait_finished(&self, at_least: u64, timeout: Duration) -> Result<u64, StoreError>;
}

/// Sends effects, one batch per queue, in order.
pub async fn send_effects(
    messaging: &dyn MessagingService,
    effects: Effects,
) -> Result<(), MessagingError> {
    match effects.len() {
        0 => Ok(()),
        1 => {
            let (queue, message) = effects.into_iter().next().expect("one effect");
            messaging.send(&queue, message).await.map(|_| ())
        }
        _ => {
            let mut by_queue: Vec<(tasker_messaging::QueueName, Vec<_>)> = Vec::new();
            for (queue, message) in effects {
                match by_queue.iter_mut().find(|(q, _)| *q == queue) {
                    Some((_, batch)) => batch.push(message),
                    None => by_queue.push((queue, vec![message])),
                }
            }
            for (queue, batch) in by_queue {
                messaging.send_batch(&queue, batch).await?;
            }
            Ok(())
        }
    }
}

/// Task state in process memory, next to any provider.
///
/// Each task has its own async lock, held across the sends of its transition: the new state is
/// stored only once its messages are sent, so a send that fails (broker down) leaves the task
/// as it was and the transition can simply run again.
pub struct InMemoryTaskStore {
    tasks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<TaskState>>>>,
    finished: tokio::sync::watch::Sender<u64>,
    messaging: Arc<dyn MessagingService>,
}

impl InMemoryTaskStore {
    pub fn new(messaging: Arc<dyn MessagingService>) -> Self {
        InMemoryTaskStore {
            tasks: Mutex::new(HashMap::new()),
            finished: tokio::sync::watch::Sender::new(0),
            messaging,
        }
    }

    fn task(&self, task: Uuid) -> Result<Arc<tokio::sync::Mutex<TaskState>>, StoreError> {
        self.tasks
            .lock()
            .get(&task)
            .cloned()
            .ok_or(StoreError::NotFound(task))
    }
}

/// Waits on a counter of finished tasks (shared by the stores).
pub async fn wait_on_counter(
    counter: &tokio::sync::watch::Sender<u64>,
    at_least: u64,
    timeout: Duration,
) -> u64 {
    let mut rx = counter.subscribe();
    let reached = tokio::time::timeout(timeout, rx.wait_for(|n| *n >= at_least)).await;
    match reached {
        Ok(Ok(n)) => *n,
        _ => *counter.borrow(),
    }
}

#[async_trait]
impl TaskStore for InMemoryTaskStore {
    async fn insert_task(&self, task: TaskState, effects: Effects) -> Result<(), StoreError> {
        // Stored before its request is sent (the request's handler looks it up); stored again
        // on a retry is a no-op, so a half-done insert is finished by repeating it.
        self.tasks
            .lock()
            .entry(task.task_uuid)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(task)));
        send_effects(&*self.messaging, effects).await?;
        Ok(())
    }

    async fn update_task(&self, task: Uuid, mutation: Mutation) -> Result<TaskState, StoreError> {
        let cell = self.task(task)?;
        let mut state = cell.lock().await;
        let was_final = state.status.is_final();
        let mut next = state.clone();
        let effects = mutation(&mut next)?;
        send_effects(&*self.messaging, effects).await?;
        if !was_final && next.status.is_final() {
            self.finished.send_modify(|n| *n += 1);
        }
        *state = next.clone();
        Ok(next)
    }

    async fn all_tasks(&self) -> Result<Vec<TaskState>, StoreError> {
        let cells: Vec<_> = self.tasks.lock().values().cloned().collect();
        let mut out = Vec::with_capacity(cells.len());
        for cell in cells {
            out.push(cell.lock().await.clone());
        }
        Ok(out)
    }

    async fn finished_count(&self) -> Result<u64, StoreError> {
        Ok(*self.finished.borrow())
    }

    async fn wait_finished(&self, at_least: u64, timeout: Duration) -> Result<u64, StoreError> {
        Ok(wait_on_counter(&self.finished, at_least, timeout).await)
    }
}
