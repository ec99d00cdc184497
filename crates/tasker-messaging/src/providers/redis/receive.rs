//! Receiving: one script (`scripts::RECEIVE`) brings back due delayed messages and ended
//! leases, leases up to `max` messages and dead-letters the ones over their receive limit, in
//! one round trip; and `wait_for_messages`, woken by the queue's channel.

use std::time::Duration;

use super::codec::decode_batch;
use super::scripts::{PEEK, RECEIVE};
use super::{RedisMessageService, MAX_BATCH};
use crate::error::{MessagingError, Result};
use crate::message::ReceivedMessage;
use crate::queue_name::QueueName;
use crate::service::ProviderKind;

impl RedisMessageService {
    pub(super) async fn receive_many(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let mut conn = self.link()?.conn();
        let info = self.info(queue);
        let max = max_messages.min(MAX_BATCH);
        let vt_ms = visibility_timeout.as_micros().div_ceil(1000) as u64;
        let dlq_base = info.dlq.as_ref().map_or("", |d| d.1.base.as_str());
        let reply: redis::Value = RECEIVE
            .key(&info.keys.meta)
            .arg(&info.keys.base)
            .arg(max)
            .arg(vt_ms)
            .arg(dlq_base)
            .arg(queue.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "receive", Some(queue)))?;
        decode_batch(queue, reply, visibility_timeout).ok_or_else(|| MessagingError::Provider {
            provider: ProviderKind::Redis,
            operation: "receive",
            message: "unexpected reply shape from the receive script".into(),
            retryable: false,
        })
    }

    /// Returns when the queue's channel fires, when the next delayed message or lease is due,
    /// or after `max_wait`; at once when a message is receivable now. A missing queue (or an
    /// unreachable server) waits out `max_wait` without spinning.
    pub(super) async fn wait(&self, queue: &QueueName, max_wait: Duration) {
        let deadline = tokio::time::Instant::now() + max_wait;
        let Ok(link) = self.link() else {
            tokio::time::sleep(max_wait).await;
            return;
        };
        let info = self.info(queue);
        let channel = info.keys.part("wake");
        let notify = match link.wakeups.notify_for(&channel).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, queue = %queue, "wakeup subscription failed; sleeping");
                tokio::time::sleep_until(deadline).await;
                return;
            }
        };
        let mut conn = link.conn();
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let disconnects = link.wakeups.disconnects();
            let next: i64 = PEEK
                .key(&info.keys.meta)
                .arg(&info.keys.base)
                .invoke_async(&mut conn)
                .await
                .unwrap_or(-1);
            let until = match next {
                0 => return,
                n if n > 0 => {
                    deadline.min(tokio::time::Instant::now() + Duration::from_millis(n as u64))
                }
                _ => deadline,
            };
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return; // the time is up, or a lease or delay came due
            }
            if next != -1 && link.wakeups.disconnects() == disconnects {
                return; // a message arrived
            }
            // Woken by the subscriber's disconnect (a message may have been missed meanwhile),
            // or while the queue did not exist: a publish from before it was deleted can reach
            // this node late (a cluster forwards publishes between nodes), and returning with
            // no queue would make a loop around `wait` spin. Look at the queue again.
            if tokio::time::Instant::now() >= deadline {
                return;
            }
        }
    }
}
