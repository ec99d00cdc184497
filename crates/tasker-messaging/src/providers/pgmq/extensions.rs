//! [`PgmqExtensions`]: pgmq's own operations (`pgmq.read` semantics, archive, metrics), with
//! this provider's receipts and dead-lettering.

use std::time::Duration;

use async_trait::async_trait;

use super::PgmqMessageService;
use crate::error::Result;
use crate::message::ReceivedMessage;
use crate::queue_name::QueueName;
use crate::service::{MessagingService, PgmqExtensions};

#[async_trait]
impl PgmqExtensions for PgmqMessageService {
    async fn create_queue_with_vt(&self, queue: &QueueName, vt: Duration) -> Result<()> {
        self.create_queue(queue).await?;
        let secs =
            i32::try_from(vt.as_secs() + u64::from(vt.subsec_nanos() > 0)).unwrap_or(i32::MAX);
        sqlx::query(
            "UPDATE tasker_messaging.queues SET default_vt_secs = $2 WHERE queue_name = $1",
        )
        .bind(queue.as_str())
        .bind(secs)
        .execute(self.pool()?)
        .await
        .map_err(|e| self.err(e, "create queue", Some(queue)))?;
        Ok(())
    }

    /// pgmq.read semantics (whole seconds, rounded up; zero takes the queue's default from
    /// `create_queue_with_vt`), with this provider's receipts and dead-lettering.
    async fn read_batch(
        &self,
        queue: &QueueName,
        vt: Duration,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>> {
        let mut secs = vt.as_secs() + u64::from(vt.subsec_nanos() > 0);
        if secs == 0 {
            let default: Option<i32> = sqlx::query_scalar(
                "SELECT default_vt_secs FROM tasker_messaging.queues WHERE queue_name = $1",
            )
            .bind(queue.as_str())
            .fetch_optional(self.pool()?)
            .await
            .map_err(|e| self.err(e, "read", Some(queue)))?
            .flatten();
            secs = default.map_or(0, |s| s.max(0) as u64);
        }
        self.receive_many(queue, limit, Duration::from_secs(secs))
            .await
    }

    async fn archive_messages(&self, queue: &QueueName, msg_ids: &[i64]) -> Result<u64> {
        let meta = self.meta(queue).await?;
        // pgmq.archive's move, with our columns kept (pgmq.archive would drop the ids).
        let n: i64 = sqlx::query_scalar(&meta.sql.archive)
            .bind(msg_ids)
            .fetch_one(self.pool()?)
            .await
            .map_err(|e| self.err(e, "archive", Some(queue)))?;
        Ok(n.max(0) as u64)
    }

    async fn get_metrics(&self, queue: &QueueName) -> Result<serde_json::Value> {
        self.meta(queue).await?;
        let sqlx::types::Json(value): sqlx::types::Json<serde_json::Value> =
            sqlx::query_scalar("SELECT to_jsonb(m) FROM pgmq.metrics($1) m")
                .bind(queue.as_str())
                .fetch_one(self.pool()?)
                .await
                .map_err(|e| self.err(e, "metrics", Some(queue)))?;
        Ok(value)
    }
}
