//! Sending: a batch is one INSERT with one array per column (`send_batch` is the primitive,
//! `send` a batch of one), on the pool or inside the caller's transaction.

use sqlx::{Acquire, Postgres};

use super::codec::Encoded;
use super::{PgmqMessageService, QueueMeta, MAX_BATCH};
use crate::error::{MessagingError, Result};
use crate::message::{MessageId, OutgoingMessage};
use crate::queue_name::QueueName;
use crate::service::ProviderKind;

impl PgmqMessageService {
    pub(super) async fn send_many(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        if messages.len() > MAX_BATCH {
            return Err(MessagingError::Provider {
                provider: ProviderKind::Pgmq,
                operation: "send",
                message: format!("batch of {} exceeds {MAX_BATCH}", messages.len()),
                retryable: false,
            });
        }
        let batch = self.encode(&messages)?;
        let meta = self.meta(queue).await?;
        let ids = messages.iter().map(|m| m.message_id).collect();
        if !messages.is_empty() {
            self.send_on(self.pool()?, queue, &meta, batch).await?;
        }
        Ok(ids)
    }

    async fn send_on<'c, E>(
        &self,
        executor: E,
        queue: &QueueName,
        meta: &QueueMeta,
        batch: Encoded<'_>,
    ) -> Result<usize>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
    {
        let ids: Vec<i64> = sqlx::query_scalar(&meta.sql.send)
            .bind(batch.bodies)
            .bind(batch.kinds)
            .bind(batch.ids)
            .bind(batch.correlation_ids)
            .bind(batch.delays_ms)
            .bind(queue.as_str())
            .bind(batch.key_orders)
            .fetch_all(executor)
            .await
            .map_err(|e| self.err(e, "send", Some(queue)))?;
        Ok(ids.len())
    }

    /// Sends inside the caller's transaction: the message exists only if the transaction
    /// commits, together with whatever else it changed.
    pub async fn send_in_transaction(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        queue: &QueueName,
        message: OutgoingMessage,
    ) -> Result<MessageId> {
        let id = message.message_id;
        self.send_batch_in_transaction(tx, queue, vec![message])
            .await?;
        Ok(id)
    }

    /// `send_batch` inside the caller's transaction (one statement).
    pub async fn send_batch_in_transaction(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        let batch = self.encode(&messages)?;
        let ids = messages.iter().map(|m| m.message_id).collect();
        let conn = tx
            .acquire()
            .await
            .map_err(|e| self.err(e, "send", Some(queue)))?;
        // The queue is looked up on the transaction's connection (see `meta_in`).
        let meta = self.meta_in(&mut *conn, queue).await?;
        if !messages.is_empty() {
            self.send_on(conn, queue, &meta, batch).await?;
        }
        Ok(ids)
    }
}
