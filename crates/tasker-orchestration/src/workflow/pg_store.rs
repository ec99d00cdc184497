//! Task state in PostgreSQL, with the messages a change causes sent by PGMQ in the same
//! transaction: the state change and its message commit or roll back together.
//!
//! One row per task (`tasker_demo.tasks`), its state as jsonb, tagged with the store's run id
//! so concurrent runs never see each other's tasks; `update_task` locks the row
//! (`SELECT ... FOR UPDATE`), applies the transition in Rust (the same code as the in-memory
//! store), writes it back and sends the effects through
//! `PgmqMessageService::send_batch_in_transaction`, then commits.
//!
//! Faults: errors are classified ([`classify`]: connection loss, `57P01 admin_shutdown`, pool
//! timeouts, serialization failures are retryable). A transaction that fails retryably, also at
//! COMMIT, is run again as a whole (new transaction, row read again, transition applied again)
//! for a short window, then reported as [`StoreError::Unavailable`] for the caller's own
//! backoff. If a lost COMMIT did apply, the repeat finds the state it produced and the
//! transition changes nothing: applied twice = applied once. Each attempt passes the
//! provider's circuit breaker when one is given, so an outage opens it for the store too.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Row};
use tasker_messaging::resilience::CircuitBreaker;
use tasker_messaging::PgmqMessageService;
use tasker_messaging::{MessagingError, QueueName};
use uuid::Uuid;

use super::model::{Effects, TaskState};
use super::store::{wait_on_counter, Mutation, StoreError, TaskStore};
use crate::resilient::RideThrough;

/// How long one store call retries a failing transaction before it reports unavailable.
const TRANSACTION_RETRY_WINDOW: Duration = Duration::from_secs(2);

/// Longest one transaction may take before it counts as failed. While the server is down,
/// sqlx waits for a connection up to its pool timeout (10 s) instead of failing: without this
/// bound the store would stall silently, never trip the breaker, and health would not see
/// the outage. A timed-out transaction is rolled back, or, if its COMMIT did land, repeated
/// harmlessly (see the module docs).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(3);

/// Retryable (the server or the connection is away) or permanent. sqlx's messages carry no
/// password (the URL is never part of them).
pub fn classify(e: sqlx::Error) -> StoreError {
    let retryable = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // Connection exceptions, operator intervention (admin_shutdown, crash_shutdown,
            // cannot_connect_now), insufficient resources, serialization failure, deadlock,
            // lock not available.
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || matches!(code.as_str(), "40001" | "40P01" | "55P03")
        }
        _ => false,
    };
    if retryable {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

/// Task state in PostgreSQL next to the PGMQ queues.
pub struct PgTaskStore {
    pool: PgPool,
    run_id: Uuid,
    pgmq: Arc<PgmqMessageService>,
    /// Tasks seen final, counted once each (also when the COMMIT that made one final was lost
    /// and a repeat found it final).
    final_tasks: parking_lot::Mutex<std::collections::HashSet<Uuid>>,
    finished: tokio::sync::watch::Sender<u64>,
    breaker: Option<Arc<CircuitBreaker>>,
    ride: RideThrough,
}

impl PgTaskStore {
    /// Creates the table if missing; the store sees only the tasks it inserts (a new run).
    pub async fn new(pgmq: Arc<PgmqMessageService>) -> Result<Self, StoreError> {
        let pool = pgmq.pool()?.clone();
        for statement in [
            "CREATE SCHEMA IF NOT EXISTS tasker_demo",
            "CREATE TABLE IF NOT EXISTS tasker_demo.tasks (
                task_uuid uuid PRIMARY KEY,
                run_id uuid NOT NULL,
                state jsonb NOT NULL,
                final boolean NOT NULL DEFAULT false
            )",
            "CREATE INDEX IF NOT EXISTS tasks_run_id ON tasker_demo.tasks (run_id)",
        ] {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(classify)?;
        }
        Ok(PgTaskStore {
            pool,
            run_id: Uuid::now_v7(),
            pgmq,
            final_tasks: parking_lot::Mutex::new(std::collections::HashSet::new()),
            finished: tokio::sync::watch::Sender::new(0),
            breaker: None,
            ride: RideThrough::default(),
        })
    }

    /// Passes every transaction through `breaker` (the provider's, so store and queues open and
    /// close it together) and reports retries to `ride`'s counters.
    pub fn with_resilience(mut self, breaker: Arc<CircuitBreaker>, ride: RideThrough) -> Self {
        self.breaker = Some(breaker);
        self.ride = ride;
        self
    }

    /// Runs one attempt of a transaction under the breaker.
    async fn guarded<T, Fut>(&self, attempt: Fut) -> Result<T, StoreError>
    where
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let attempt = async {
            tokio::time::timeout(TRANSACTION_TIMEOUT, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(format!(
                        "no answer within {TRANSACTION_TIMEOUT:?}"
                    )))
                })
        };
        let Some(breaker) = &self.breaker else {
            return attempt.await;
        };
        let permit = breaker
            .try_acquire()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let result = attempt.await;
        match &result {
            Ok(_) => permit.success(),
            Err(e) if e.is_retryable() => permit.failure(),
            Err(_) => drop(permit),
        }
        result
    }

    /// Retries a whole transaction for a short window (see the module docs).
    async fn retrying<T, F, Fut>(&self, what: &'static str, attempt: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + TRANSACTION_RETRY_WINDOW;
        self.ride
            .run(what, Some(deadline), || self.guarded(attempt()))
            .await
    }

    fn saw(&self, state: &TaskState) {
        if state.status.is_final() {
            let mut seen = self.final_tasks.lock();
            if seen.insert(state.task_uuid) {
                self.finished.send_replace(seen.len() as u64);
            }
        }
    }

    /// The run this store's tasks belong to.
    pub fn run_id(&self) -> Uuid {
        self.run_id
    }

    /// Removes this run's tasks.
    pub async fn clear_run(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM tasker_demo.tasks WHERE run_id = $1")
            .bind(self.run_id)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        self.final_tasks.lock().clear();
        self.finished.send_replace(0);
        Ok(done.rows_affected())
    }

    async fn send_effects(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        effects: Effects,
    ) -> Result<(), MessagingError> {
        let mut by_queue: Vec<(QueueName, Vec<_>)> = Vec::new();
        for (queue, message) in effects {
            match by_queue.iter_mut().find(|(q, _)| *q == queue) {
                Some((_, batch)) => batch.push(message),
                None => by_queue.push((queue, vec![message])),
            }
        }
        for (queue, batch) in by_queue {
            self.pgmq
                .send_batch_in_transaction(tx, &queue, batch)
                .await?;
        }
        Ok(())
    }
}

impl PgTaskStore {
    /// One attempt of `insert_task`: nothing is sent when the task is already stored (a repeat
    /// after a lost COMMIT: its request committed with it).
    async fn try_insert(&self, task: &TaskState, effects: &Effects) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let inserted = sqlx::query(
            "INSERT INTO tasker_demo.tasks (task_uuid, run_id, state, final) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (task_uuid) DO NOTHING",
        )
        .bind(task.task_uuid)
        .bind(self.run_id)
        .bind(Json(task))
        .bind(task.status.is_final())
        .execute(&mut *tx)
        .await
        .map_err(classify)?
        .rows_affected();
        if inserted == 0 {
            return Ok(());
        }
        self.send_effects(&mut tx, effects.clone()).await?;
        tx.commit().await.map_err(classify)?;
        Ok(())
    }

    /// One attempt of `update_task`.
    async fn try_update(&self, task: Uuid, mutation: &Mutation) -> Result<TaskState, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let row =
            sqlx::query("SELECT state FROM tasker_demo.tasks WHERE task_uuid = $1 FOR UPDATE")
                .bind(task)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?
                .ok_or(StoreError::NotFound(task))?;
        let Json(mut state): Json<TaskState> = row.try_get(0).map_err(classify)?;
        let before = state.clone();
        let effects = mutation(&mut state)?;
        if state != before {
            sqlx::query("UPDATE tasker_demo.tasks SET state = $2, final = $3 WHERE task_uuid = $1")
                .bind(task)
                .bind(Json(&state))
                .bind(state.status.is_final())
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        self.send_effects(&mut tx, effects).await?;
        tx.commit().await.map_err(classify)?;
        Ok(state)
    }
}

#[async_trait]
impl TaskStore for PgTaskStore {
    async fn insert_task(&self, task: TaskState, effects: Effects) -> Result<(), StoreError> {
        self.retrying("insert task", || self.try_insert(&task, &effects))
            .await
    }

    async fn update_task(&self, task: Uuid, mutation: Mutation) -> Result<TaskState, StoreError> {
        let state = self
            .retrying("update task", || self.try_update(task, &mutation))
            .await?;
        self.saw(&state);
        Ok(state)
    }

    async fn all_tasks(&self) -> Result<Vec<TaskState>, StoreError> {
        let rows = self
            .retrying("read tasks", || async {
                sqlx::query("SELECT state FROM tasker_demo.tasks WHERE run_id = $1")
                    .bind(self.run_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(classify)
            })
            .await?;
        rows.into_iter()
            .map(|row| {
                row.try_get::<Json<TaskState>, _>(0)
                    .map(|Json(state)| state)
                    .map_err(classify)
            })
            .collect()
    }

    async fn finished_count(&self) -> Result<u64, StoreError> {
        Ok(*self.finished.borrow())
    }

    async fn wait_finished(&self, at_least: u64, timeout: Duration) -> Result<u64, StoreError> {
        Ok(wait_on_counter(&self.finished, at_least, timeout).await)
    }
}
