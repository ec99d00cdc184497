//! Receipts and the operations that take one. A receipt is `(sequence, generation)`: every
//! new lease of a message bumps its generation, so a receipt of a lease that ended no longer
//! matches (receipt fencing, checked in `queue.rs` under the queue's lock).

use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::queue::StoredMessage;
use super::{codec, InMemoryMessageService, MemQueue, SEQ_BITS};
use crate::error::{MessagingError, Result};
use crate::message::{DeadLetterReason, ReceiptHandle};
use crate::queue_name::QueueName;
use crate::service::DeleteOutcome;

impl InMemoryMessageService {
    #[inline]
    pub(super) fn receipt_parts(queue: &QueueName, receipt: &ReceiptHandle) -> Result<(u64, u64)> {
        receipt.as_pair().ok_or_else(|| {
            MessagingError::invalid_receipt(queue.as_str(), "not an in-memory receipt")
        })
    }

    /// Refuses a receipt whose sequence number belongs to another queue.
    #[inline]
    pub(super) fn check_owner(
        queue: &MemQueue,
        (seq, generation): (u64, u64),
    ) -> Result<(u64, u64)> {
        if seq >> SEQ_BITS != queue.seq_space {
            return Err(MessagingError::invalid_receipt(
                queue.name.as_str(),
                "a receipt of another queue",
            ));
        }
        Ok((seq, generation))
    }

    pub(super) fn delete_leased(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let q = self.queue(queue)?;
        let mut outcome = DeleteOutcome::default();
        let mut state = q.state.lock();
        for receipt in receipts {
            let result = Self::receipt_parts(queue, receipt)
                .and_then(|parts| Self::check_owner(&q, parts))
                .and_then(|(seq, generation)| {
                    state
                        .delete(seq, generation)
                        .map_err(|e| Self::receipt_error(queue, e))
                });
            match result {
                Ok(()) => outcome.deleted += 1,
                Err(e) => outcome.rejected.push((receipt.clone(), e)),
            }
        }
        Ok(outcome)
    }

    pub(super) fn set_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        let parts = Self::receipt_parts(queue, receipt)?;
        let q = self.queue(queue)?;
        let (seq, generation) = Self::check_owner(&q, parts)?;
        let result =
            q.state
                .lock()
                .change_visibility(seq, generation, visibility_timeout, Instant::now());
        result.map_err(|e| Self::receipt_error(queue, e))?;
        if visibility_timeout.is_zero() {
            q.notify.notify_waiters();
        }
        Ok(())
    }

    pub(super) fn dead_letter_leased(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let parts = Self::receipt_parts(queue, receipt)?;
        let q = self.queue(queue)?;
        let (seq, generation) = Self::check_owner(&q, parts)?;
        let taken = q.state.lock().take_leased(seq, generation);
        let message = taken.map_err(|e| Self::receipt_error(queue, e))?;
        let reason = reason.to_owned();
        self.move_to_dead_letter(&q, vec![message], move |_| DeadLetterReason::Rejected {
            reason: reason.clone(),
        })
    }

    /// Moves messages removed from `source` into its dead-letter queue (created if it was
    /// deleted meanwhile, so nothing is lost).
    pub(super) fn move_to_dead_letter(
        &self,
        source: &MemQueue,
        messages: Vec<StoredMessage>,
        reason: impl Fn(&StoredMessage) -> DeadLetterReason,
    ) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let dlq_name = match &source.dead_letter_queue {
            Some(name) => name.clone(),
            None => source.name.dead_letter(&self.settings.dead_letter_suffix)?,
        };
        let dlq = self.get_or_create(&dlq_name, 0)?;
        let now_utc = Utc::now();
        let moved = messages
            .into_iter()
            .map(|m| codec::dead_lettered(&source.name, reason(&m), now_utc, m));
        self.insert(&dlq, moved)
    }
}
