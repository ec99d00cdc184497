//! Receiving: one statement leases a batch (and counts what is over its receive limit),
//! rows are decoded by `codec.rs`, and what is over the limit or undecodable is moved to the
//! dead-letter queue afterwards. `wait_for_messages` waits on the listener's wakeups.

use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::Row;

use super::codec::{col, decode_row, duration_ms, Undecodable};
use super::{PgmqMessageService, QueueMeta, MAX_BATCH};
use crate::error::Result;
use crate::message::{DeadLetterReason, ReceivedMessage};
use crate::queue_name::QueueName;

impl PgmqMessageService {
    pub(super) async fn receive_many(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let meta = self.meta(queue).await?;
        if max_messages == 0 {
            return Ok(Vec::new());
        }
        let pool = self.pool()?;
        let limit = max_messages.min(MAX_BATCH) as i64;
        let max_receive_count = match (&meta.sql.dead_letter_over, meta.max_receive_count) {
            (Some(_), n) => i32::try_from(n).unwrap_or(i32::MAX),
            (None, _) => 0,
        };
        let rows = sqlx::query(&meta.sql.receive)
            .bind(limit)
            .bind(duration_ms(visibility_timeout))
            .bind(max_receive_count)
            .fetch_all(pool)
            .await
            .map_err(|e| self.err(e, "receive", Some(queue)))?;
        let mut out = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        let mut over: i64 = 0;
        for row in &rows {
            over = row.try_get::<i64, _>(col::OVER).unwrap_or(0);
            // The one row of a receive that leased nothing.
            let Ok(Some(msg_id)) = row.try_get::<Option<i64>, _>(col::MSG_ID) else {
                continue;
            };
            match decode_row(queue, meta.tag, row, msg_id) {
                Ok(m) => out.push(m),
                Err(u) => bad.push(u),
            }
        }
        if over > 0 {
            // The leased messages are returned either way; what is not moved now is found
            // again, still over its limit, by the next receive.
            if let Err(e) = self
                .dead_letter_over(queue, &meta, max_receive_count, over)
                .await
            {
                tracing::warn!(queue = %queue, over_limit = over, error = %e, "could not dead-letter messages over max_receive_count; they stay in the queue, unleased");
            }
            // They took places in the batch: fill those with messages that can be received
            // (only on this rare path, so the common receive stays one statement).
            let missing = limit - (out.len() + bad.len()) as i64;
            if missing > 0 {
                // Its error must not lose the messages leased above: they are returned.
                if let Err(e) = self
                    .receive_more(
                        queue,
                        &meta,
                        missing,
                        visibility_timeout,
                        max_receive_count,
                        &mut out,
                        &mut bad,
                    )
                    .await
                {
                    tracing::warn!(queue = %queue, error = %e, "could not lease past messages over max_receive_count");
                }
            }
        }
        for u in bad {
            // Never dropped, never returned as garbage: moved to the dead-letter queue with the
            // reason. A queue without one (a dead-letter queue itself) keeps the row leased:
            // it comes back when the lease ends, for a person to look at with plain SQL.
            if meta.dead_letter_queue.is_none() {
                tracing::warn!(queue = %queue, msg_id = u.msg_id, error = %u.error, "undecodable pgmq row left in place (no dead-letter queue)");
                continue;
            }
            tracing::warn!(queue = %queue, msg_id = u.msg_id, error = %u.error, "dead-lettering an undecodable pgmq row");
            let reason = DeadLetterReason::Undecodable { error: u.error };
            if let Err(e) = self
                .dead_letter_raw(queue, meta.clone(), u.msg_id, u.read_ct, &reason)
                .await
            {
                tracing::warn!(queue = %queue, msg_id = u.msg_id, error = %e, "could not dead-letter an undecodable row");
            }
        }
        Ok(out)
    }

    /// Leases up to `limit` more messages, skipping those over their receive limit.
    #[allow(clippy::too_many_arguments)]
    async fn receive_more(
        &self,
        queue: &QueueName,
        meta: &QueueMeta,
        limit: i64,
        visibility_timeout: Duration,
        max_receive_count: i32,
        out: &mut Vec<ReceivedMessage>,
        bad: &mut Vec<Undecodable>,
    ) -> Result<()> {
        let Some(statement) = meta.sql.receive_receivable.as_deref() else {
            return Ok(());
        };
        let rows = sqlx::query(statement)
            .bind(limit)
            .bind(duration_ms(visibility_timeout))
            .bind(max_receive_count)
            .fetch_all(self.pool()?)
            .await
            .map_err(|e| self.err(e, "receive", Some(queue)))?;
        for row in &rows {
            let Ok(Some(msg_id)) = row.try_get::<Option<i64>, _>(col::MSG_ID) else {
                continue;
            };
            match decode_row(queue, meta.tag, row, msg_id) {
                Ok(m) => out.push(m),
                Err(u) => bad.push(u),
            }
        }
        Ok(())
    }

    /// Moves the messages a receive found over their receive limit to the dead-letter queue.
    async fn dead_letter_over(
        &self,
        queue: &QueueName,
        meta: &QueueMeta,
        max_receive_count: i32,
        seen: i64,
    ) -> Result<()> {
        let (Some(statement), Some(dlq)) = (
            meta.sql.dead_letter_over.as_deref(),
            &meta.dead_letter_queue,
        ) else {
            return Ok(());
        };
        let (moved, _woke): (i64, i64) = sqlx::query_as(statement)
            .bind(max_receive_count)
            .bind(seen)
            .bind(queue.as_str())
            .bind(dlq.as_str())
            .fetch_one(self.pool()?)
            .await
            .map_err(|e| self.err(e, "dead-letter", Some(queue)))?;
        tracing::debug!(queue = %queue, moved, "dead-lettered messages over max_receive_count");
        Ok(())
    }

    pub(super) async fn wait(&self, queue: &QueueName, max_wait: Duration) {
        if self.shut_down.load(Ordering::Acquire) || max_wait.is_zero() {
            return;
        }
        // Bounded either way: with the listener down this is the polling fallback.
        let notify = self.wakeups.notify_for(queue.as_str());
        let _ = tokio::time::timeout(max_wait, notify.notified()).await;
    }
}
