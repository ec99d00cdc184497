//! Task state in PostgreSQL, with the messages a change causes sent by PGMQ in the same
//! transaction: the state change and its message commit or roll back together.
//!
//! One row per task (`tasker_demo.tasks`), its state as jsonb; `update_task` locks the row
//! (`SELECT ... FOR UPDATE`), applies the transition in Rust (the same code as the in-memory
//! store), writes it back and sends the effects through
//! `PgmqMessageService::send_batch_in_transaction`, then commits.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Row};
use tasker_messaging::providers::pgmq::PgmqMessageService;
use tasker_messaging::{MessagingError, QueueName};
use uuid::Uuid;

use super::model::{Effects, TaskState};
use super::store::{wait_on_counter, Mutation, StoreError, TaskStore};

fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Task state in PostgreSQL next to the PGMQ queues.
pub struct PgTaskStore {
    pool: PgPool,
    pgmq: Arc<PgmqMessageService>,
    finished: tokio::sync::watch::Sender<u64>,
}

impl PgTaskStore {
    /// Creates the table if missing; counts the tasks already final.
    pub async fn new(pgmq: Arc<PgmqMessageService>) -> Result<Self, StoreError> {
        let pool = pgmq.pool()?.clone();
        for statement in [
            "CREATE SCHEMA IF NOT EXISTS tasker_demo",
            "CREATE TABLE IF NOT EXISTS tasker_demo.tasks (
                task_uuid uuid PRIMARY KEY,
                state jsonb NOT NULL,
                final boolean NOT NULL DEFAULT false
            )",
        ] {
            sqlx::query(statement)
                .execute(&pool)
                .await
                .map_err(backend)?;
        }
        let finished: i64 = sqlx::query("SELECT count(*) FROM tasker_demo.tasks WHERE final")
            .fetch_one(&pool)
            .await
            .map_err(backend)?
            .try_get(0)
            .map_err(backend)?;
        Ok(PgTaskStore {
            pool,
            pgmq,
            finished: tokio::sync::watch::Sender::new(finished.max(0) as u64),
        })
    }

    /// Removes every task (the demo starts from nothing).
    pub async fn clear(&self) -> Result<(), StoreError> {
        sqlx::query("TRUNCATE tasker_demo.tasks")
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        self.finished.send_replace(0);
        Ok(())
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

#[async_trait]
impl TaskStore for PgTaskStore {
    async fn insert_task(&self, task: TaskState, effects: Effects) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("INSERT INTO tasker_demo.tasks (task_uuid, state, final) VALUES ($1, $2, $3)")
            .bind(task.task_uuid)
            .bind(Json(&task))
            .bind(task.status.is_final())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        self.send_effects(&mut tx, effects).await?;
        tx.commit().await.map_err(backend)?;
        Ok(())
    }

    async fn update_task(&self, task: Uuid, mutation: Mutation) -> Result<TaskState, StoreError> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let row = sqlx::query("SELECT state FROM tasker_demo.tasks WHERE task_uuid = $1 FOR UPDATE")
            .bind(task)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound(task))?;
        let Json(mut state): Json<TaskState> = row.try_get(0).map_err(backend)?;
        let was_final = state.status.is_final();
        let before = state.clone();
        let effects = mutation(&mut state)?;
        if state != before {
            sqlx::query("UPDATE tasker_demo.tasks SET state = $2, final = $3 WHERE task_uuid = $1")
                .bind(task)
                .bind(Json(&state))
                .bind(state.status.is_final())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        self.send_effects(&mut tx, effects).await?;
        tx.commit().await.map_err(backend)?;
        if !was_final && state.status.is_final() {
            self.finished.send_modify(|n| *n += 1);
        }
        Ok(state)
    }

    async fn all_tasks(&self) -> Result<Vec<TaskState>, StoreError> {
        let rows = sqlx::query("SELECT state FROM tasker_demo.tasks")
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.into_iter()
            .map(|row| {
                row.try_get::<Json<TaskState>, _>(0)
                    .map(|Json(state)| state)
                    .map_err(backend)
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
