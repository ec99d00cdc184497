//! Errors as [`MessagingError`]s: a receipt the queue refused. (Everything else this provider
//! reports is built where it happens: a missing queue, a payload too large, a shut-down
//! service.)

use super::queue::ReceiptError;
use super::InMemoryMessageService;
use crate::error::MessagingError;
use crate::queue_name::QueueName;

impl InMemoryMessageService {
    pub(super) fn receipt_error(queue: &QueueName, error: ReceiptError) -> MessagingError {
        match error {
            ReceiptError::Stale => MessagingError::invalid_receipt(
                queue.as_str(),
                "the lease ended and the message was received again",
            ),
            ReceiptError::Gone => {
                MessagingError::invalid_receipt(queue.as_str(), "the message no longer exists")
            }
            ReceiptError::DeadLettered => MessagingError::invalid_receipt(
                queue.as_str(),
                "the message was moved to the dead-letter queue",
            ),
        }
    }
}
