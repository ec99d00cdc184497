//! Receiving: a batch leased under the queue's lock (messages over their receive limit are
//! moved to the dead-letter queue instead), and `wait_for_messages`, which sleeps on the
//! queue's `Notify` until a send, a release or the next timer (no polling).

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::InMemoryMessageService;
use crate::error::Result;
use crate::message::{DeadLetterReason, ReceivedMessage};
use crate::queue_name::QueueName;

impl InMemoryMessageService {
    pub(super) fn receive_many(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let q = self.queue(queue)?;
        let max = max_messages.min(self.capabilities.max_batch_size);
        let mut out = Vec::new();
        let mut dead = Vec::new();
        {
            let mut state = q.state.lock();
            out.reserve(max.min(state.visible() as usize));
            state.receive(
                max,
                visibility_timeout,
                q.max_receive_count,
                (Instant::now(), Utc::now()),
                &mut out,
                &mut dead,
            );
        }
        let max_receive_count = q.max_receive_count;
        self.move_to_dead_letter(&q, dead, |_| DeadLetterReason::MaxReceiveCountExceeded {
            max_receive_count,
        })?;
        Ok(out)
    }

    pub(super) async fn wait(&self, queue: &QueueName, max_wait: Duration) {
        let Ok(q) = self.queue(queue) else {
            // The next receive reports the error; do not spin meanwhile.
            tokio::time::sleep(max_wait).await;
            return;
        };
        let notified = q.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Instant::now();
        let deadline = {
            let mut state = q.state.lock();
            state.release_due(now);
            if state.visible() > 0 || q.deleted.load(Ordering::Acquire) {
                return;
            }
            match state.next_timer() {
                Some(t) => t.min(now + max_wait),
                None => now + max_wait,
            }
        };
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
