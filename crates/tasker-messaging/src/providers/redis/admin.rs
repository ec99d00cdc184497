//! Queues: create (with the dead-letter queue), delete, purge, stats and redrive, one script
//! each.

use redis::Value;

use super::scripts::{CREATE, DROP, PURGE, REDRIVE, STATS};
use super::RedisMessageService;
use crate::error::{MessagingError, Result};
use crate::queue_name::QueueName;
use crate::service::{ProviderKind, QueueOptions, QueueStats};

/// Dead letters moved back per script (a large redrive loops, so no script runs for long).
const REDRIVE_CHUNK: usize = 1000;

impl RedisMessageService {
    pub(super) async fn create_with(
        &self,
        queue: &QueueName,
        options: &QueueOptions,
    ) -> Result<()> {
        let mut conn = self.link()?.conn();
        let info = self.info(queue);
        let max = options
            .max_receive_count
            .unwrap_or(self.settings.default_max_receive_count);
        let dlq_base = match (&info.dlq, max) {
            (Some(d), m) if m > 0 => d.1.base.as_str(),
            _ => "",
        };
        let _: i64 = CREATE
            .key(&info.keys.meta)
            .arg(&info.keys.base)
            .arg(rand::random::<u32>())
            .arg(max)
            .arg(dlq_base)
            .arg(rand::random::<u32>())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "create_queue", Some(queue)))?;
        self.created.write().insert(queue.clone());
        Ok(())
    }

    /// `QueueNotFound` unless the queue exists (for paths that refuse before any script).
    pub(super) async fn check_exists(&self, queue: &QueueName) -> Result<()> {
        let mut conn = self.link()?.conn();
        let info = self.info(queue);
        let exists: bool = redis::cmd("EXISTS")
            .arg(&info.keys.meta)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "exists", Some(queue)))?;
        if exists {
            Ok(())
        } else {
            Err(MessagingError::queue_not_found(queue.as_str()))
        }
    }

    pub(super) async fn remove_queue(&self, queue: &QueueName) -> Result<()> {
        let mut conn = self.link()?.conn();
        let info = self.info(queue);
        let dlq_base = info.dlq.as_ref().map_or("", |d| d.1.base.as_str());
        let _: i64 = DROP
            .key(&info.keys.meta)
            .arg(&info.keys.base)
            .arg(dlq_base)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "delete_queue", Some(queue)))?;
        self.created.write().remove(queue);
        Ok(())
    }

    pub(super) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        let mut conn = self.link()?.conn();
        let info = self.info(queue);
        let n: u64 = PURGE
            .key(&info.keys.meta)
            .arg(&info.keys.base)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "purge_queue", Some(queue)))?;
        Ok(n)
    }

    pub(super) async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let mut conn = self.link()?.conn();
        let info = self.info(queue);
        let dlq_base = info.dlq.as_ref().map_or("", |d| d.1.base.as_str());
        let reply: Vec<Value> = STATS
            .key(&info.keys.meta)
            .arg(&info.keys.base)
            .arg(dlq_base)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "get_queue_stats", Some(queue)))?;
        let int = |i: usize| -> Option<i64> {
            match reply.get(i)? {
                Value::Int(n) => Some(*n),
                Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                _ => None,
            }
        };
        let (Some(visible), Some(in_flight), Some(delayed), Some(now)) =
            (int(0), int(1), int(2), int(5))
        else {
            return Err(MessagingError::Provider {
                provider: ProviderKind::Redis,
                operation: "get_queue_stats",
                message: "unexpected reply shape from the stats script".into(),
                retryable: false,
            });
        };
        let oldest = int(3).map(|at| (now - at).max(0) as f64 / 1000.0);
        let dead = int(4).filter(|d| *d >= 0).map(|d| d as u64);
        Ok(QueueStats {
            queue_name: queue.clone(),
            message_count: visible.max(0) as u64,
            in_flight_count: Some(in_flight.max(0) as u64),
            delayed_count: Some(delayed.max(0) as u64),
            oldest_message_age_seconds: oldest,
            dead_letter_count: dead,
        })
    }

    pub(super) async fn redrive(&self, queue: &QueueName, max_messages: usize) -> Result<u64> {
        let link = self.link()?;
        let info = self.info(queue);
        let dlq_base = info.dlq.as_ref().map_or("", |d| d.1.base.as_str());
        let mut moved = 0u64;
        let mut left = max_messages;
        loop {
            let chunk = left.min(REDRIVE_CHUNK);
            let mut conn = link.conn();
            let n: u64 = REDRIVE
                .key(&info.keys.meta)
                .arg(&info.keys.base)
                .arg(dlq_base)
                .arg(chunk)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.err(e, "redrive_dead_letters", Some(queue)))?;
            moved += n;
            left -= n.min(left as u64) as usize;
            if left == 0 || (n as usize) < chunk {
                return Ok(moved);
            }
        }
    }
}
