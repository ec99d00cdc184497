//! No encoding: a message is stored as it came (its payload `Bytes` is shared, never copied)
//! and handed out as it was stored (see `queue.rs`). What is here: a message as the queue
//! stores it when it is sent, dead-lettered, redriven or put back.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::queue::{NewMessage, StoredMessage};
use crate::message::{DeadLetterInfo, DeadLetterReason, OutgoingMessage};
use crate::queue_name::QueueName;

/// A message as sent.
#[inline]
pub(super) fn sent(m: OutgoingMessage) -> NewMessage {
    NewMessage {
        payload: m.payload,
        message_id: m.message_id,
        correlation_id: m.correlation_id,
        delay: m.delay,
        dead_letter: None,
        enqueued_at: None,
    }
}

/// A message moved to a dead-letter queue, with the record of where from and why.
#[inline]
pub(super) fn dead_lettered(
    source: &QueueName,
    reason: DeadLetterReason,
    at: DateTime<Utc>,
    m: StoredMessage,
) -> NewMessage {
    let info = DeadLetterInfo {
        source_queue: source.clone(),
        reason,
        receive_count: m.receive_count,
        dead_lettered_at: at,
        original_enqueued_at: m.enqueued_at,
    };
    NewMessage {
        payload: m.payload,
        message_id: m.message_id,
        correlation_id: m.correlation_id,
        delay: Duration::ZERO,
        dead_letter: Some(Box::new(info)),
        enqueued_at: Some(m.enqueued_at),
    }
}

/// A dead letter sent back to its queue: the record dropped, the first enqueue time kept.
#[inline]
pub(super) fn redriven(m: &StoredMessage) -> NewMessage {
    NewMessage {
        payload: m.payload.clone(),
        message_id: m.message_id,
        correlation_id: m.correlation_id,
        delay: Duration::ZERO,
        dead_letter: None,
        enqueued_at: m.dead_letter.as_ref().map(|d| d.original_enqueued_at),
    }
}

/// A dead letter put back in its dead-letter queue as it was (a redrive that failed).
#[inline]
pub(super) fn restored(m: StoredMessage) -> NewMessage {
    NewMessage {
        payload: m.payload,
        message_id: m.message_id,
        correlation_id: m.correlation_id,
        delay: Duration::ZERO,
        dead_letter: m.dead_letter,
        enqueued_at: Some(m.enqueued_at),
    }
}
