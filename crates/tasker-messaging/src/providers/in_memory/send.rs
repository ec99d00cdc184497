//! Sending: payload checks, then the whole batch appended under the queue's lock and the
//! queue's waiters woken once.

use std::sync::atomic::Ordering;

use chrono::Utc;
use tokio::time::Instant;

use super::queue::NewMessage;
use super::{codec, InMemoryMessageService, MemQueue};
use crate::error::{MessagingError, Result};
use crate::message::{MessageId, OutgoingMessage};
use crate::queue_name::QueueName;

impl InMemoryMessageService {
    #[inline]
    pub(super) fn check_payload(&self, size: usize) -> Result<()> {
        if size > self.settings.max_payload_bytes {
            return Err(MessagingError::PayloadTooLarge {
                size,
                max: self.settings.max_payload_bytes,
            });
        }
        Ok(())
    }

    pub(super) fn insert(
        &self,
        queue: &MemQueue,
        messages: impl IntoIterator<Item = NewMessage>,
    ) -> Result<()> {
        let now = Instant::now();
        let now_utc = Utc::now();
        {
            let mut state = queue.state.lock();
            // Checked under the lock: delete_queue marks the queue before draining it.
            if queue.deleted.load(Ordering::Acquire) {
                return Err(MessagingError::queue_not_found(queue.name.as_str()));
            }
            for message in messages {
                state.insert(message, now, now_utc);
            }
        }
        queue.notify.notify_waiters();
        Ok(())
    }

    pub(super) fn send_many(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        for m in &messages {
            self.check_payload(m.payload.len())?;
        }
        let q = self.queue(queue)?;
        let ids = messages.iter().map(|m| m.message_id).collect();
        self.insert(&q, messages.into_iter().map(codec::sent))?;
        Ok(ids)
    }
}
