//! `receive_many`: leasing ready records from the queue's table (the fetcher fills it in the
//! background; receive never waits for the broker), dead-lettering those over their receive
//! limit; and `wait` (the body of `wait_for_messages`) on the table's `Notify`, woken by the
//! fetcher when a record arrives and bounded by the next lease or delay to end.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::connection::QueueHandle;
use super::KafkaMessageService;
use crate::error::Result;
use crate::message::{DeadLetterReason, ReceivedMessage};
use crate::queue_name::QueueName;

impl KafkaMessageService {
    pub(super) async fn receive_many(
        &self,
        queue: &QueueName,
        max: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let handle = self.open(queue).await?;
        let max = max.min(self.capabilities.max_batch_size);
        if max == 0 {
            return Ok(Vec::new());
        }
        let limit = handle.info.max_receive_count;
        let mut out = Vec::with_capacity(max.min(64));
        loop {
            let mut over = Vec::new();
            let room = {
                let now = Instant::now();
                let mut leases = handle.leases.lock();
                leases.expire(now);
                let expires =
                    Utc::now() + chrono::Duration::from_std(visibility_timeout).unwrap_or_default();
                leases.take(
                    max,
                    now + visibility_timeout,
                    expires,
                    limit,
                    &mut out,
                    &mut over,
                );
                leases.ready_len() < self.settings.max_buffered
            };
            if room {
                handle.room.notify_one();
            }
            if over.is_empty() {
                return Ok(out);
            }
            // Over their limit: moved to the dead-letter queue before this receive returns,
            // then the places they took are filled from what is ready.
            self.move_to_dead_letter(
                &handle,
                over,
                DeadLetterReason::MaxReceiveCountExceeded {
                    max_receive_count: limit,
                },
            )
            .await;
            if out.len() >= max {
                return Ok(out);
            }
        }
    }

    pub(super) async fn wait(&self, queue: &QueueName, max_wait: Duration) {
        let deadline = Instant::now() + max_wait;
        let handle: Arc<QueueHandle> = match self.open(queue).await {
            Ok(h) => h,
            Err(_) => {
                tokio::time::sleep_until(deadline).await;
                return;
            }
        };
        let notified = handle.ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next_timer = {
            let mut leases = handle.leases.lock();
            let next = leases.expire(Instant::now());
            if leases.ready_len() > 0 {
                return;
            }
            next
        };
        let until = next_timer.map_or(deadline, |t| t.min(deadline));
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }
}
