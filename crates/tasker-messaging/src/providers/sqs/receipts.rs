//! Receipts: `<sqs name> <SQS receipt handle>`, so a receipt names its queue and one used on
//! another queue is refused before any call. SQS checks the handle itself; it accepts handles
//! of earlier deliveries (no fencing, see the module docs).
//!
//! The lease table keeps, per receipt this service handed out, what `dead_letter_message`
//! must copy (SQS cannot read a message by its receipt): the payload (shared with the
//! message handed out, not copied) and ids, until delete, release or the lease's end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use chrono::Utc;
use tokio::time::Instant;

use super::codec::RECEIPT_SEPARATOR;
use super::{QueueMeta, SqsMessageService};
use crate::error::{MessagingError, Result};
use crate::message::{DeadLetterInfo, DeadLetterReason, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::service::DeleteOutcome;

/// Receipts remembered as dead-lettered (refused afterwards), per queue.
const DEAD_MEMORY: usize = 4_096;
/// Lease-table size above which ended leases are swept on insert.
const SWEEP_AT: usize = 4_096;

/// A lease this service handed out.
pub(super) struct Held {
    message: ReceivedMessage,
    ends: Instant,
}

#[derive(Default)]
pub(super) struct Leases {
    held: HashMap<ReceiptHandle, Held>,
    dead: HashSet<ReceiptHandle>,
    dead_order: VecDeque<ReceiptHandle>,
}

impl Leases {
    #[inline]
    pub(super) fn insert(&mut self, message: &ReceivedMessage, visibility: Duration) {
        let now = Instant::now();
        if self.held.len() >= SWEEP_AT {
            self.held.retain(|_, h| h.ends > now);
        }
        self.held.insert(
            message.metadata.receipt_handle.clone(),
            Held {
                message: message.clone(),
                ends: now + visibility,
            },
        );
    }

    pub(super) fn clear(&mut self) {
        self.held.clear();
    }

    fn mark_dead(&mut self, receipt: &ReceiptHandle) {
        self.held.remove(receipt);
        if self.dead.insert(receipt.clone()) {
            self.dead_order.push_back(receipt.clone());
            if self.dead_order.len() > DEAD_MEMORY {
                if let Some(old) = self.dead_order.pop_front() {
                    self.dead.remove(&old);
                }
            }
        }
    }
}

/// The SQS handle of a receipt for `meta`'s queue, or why it is refused.
#[inline]
pub(super) fn handle<'r>(meta: &QueueMeta, receipt: &'r ReceiptHandle) -> Result<&'r str> {
    let invalid = |why: &str| MessagingError::invalid_receipt(meta.name.as_str(), why);
    let text = receipt
        .as_text()
        .ok_or_else(|| invalid("not an SQS receipt"))?;
    let (name, handle) = text
        .split_once(RECEIPT_SEPARATOR)
        .ok_or_else(|| invalid("not an SQS receipt"))?;
    if name != meta.sqs_name {
        return Err(invalid("the receipt belongs to another queue"));
    }
    if handle.is_empty() {
        return Err(invalid("empty receipt handle"));
    }
    Ok(handle)
}

/// Whole seconds, rounded up (SQS's unit), capped at SQS's 12 hours.
#[inline]
pub(super) fn secs(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.min(43_200) as i32
}

impl SqsMessageService {
    pub(super) async fn delete_leased(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let meta = self.meta(queue).await?;
        self.delete_on(&meta, receipts).await
    }

    /// `DeleteMessageBatch` in chunks of 10 (concurrently); refused entries reported.
    pub(super) async fn delete_on(
        &self,
        meta: &Arc<QueueMeta>,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let mut outcome = DeleteOutcome::default();
        let mut valid: Vec<(&ReceiptHandle, &str)> = Vec::with_capacity(receipts.len());
        {
            let mut leases = meta.leases.lock();
            for r in receipts {
                if leases.dead.contains(r) {
                    outcome.rejected.push((
                        r.clone(),
                        MessagingError::invalid_receipt(
                            meta.name.as_str(),
                            "the message was dead-lettered under this receipt",
                        ),
                    ));
                    continue;
                }
                match handle(meta, r) {
                    Ok(h) => {
                        leases.held.remove(r);
                        valid.push((r, h));
                    }
                    Err(e) => outcome.rejected.push((r.clone(), e)),
                }
            }
        }
        if valid.is_empty() {
            return Ok(outcome);
        }
        let client = self.client()?;
        let m = self.mapper("delete_messages", meta.name.as_str());
        let calls = valid.chunks(10).map(|chunk| {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, (_, h))| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(*h)
                        .build()
                        .ok()
                })
                .collect();
            client
                .delete_message_batch()
                .queue_url(&meta.url)
                .set_entries(Some(entries))
                .send()
        });
        let results = futures::future::join_all(calls).await;
        for (chunk, result) in valid.chunks(10).zip(results) {
            let out = result.map_err(|e| self.gone(&meta.name, m.map(e)))?;
            outcome.deleted += out.successful.len();
            for f in out.failed {
                let Some(r) = f.id.parse::<usize>().ok().and_then(|i| chunk.get(i)) else {
                    continue;
                };
                let text = m.scrub(f.message.as_deref().unwrap_or(&f.code));
                let e = m.coded(&f.code, text);
                if matches!(e, MessagingError::QueueNotFound { .. }) {
                    self.forget(&meta.name);
                    return Err(e);
                }
                outcome.rejected.push((r.0.clone(), e));
            }
        }
        Ok(outcome)
    }

    pub(super) async fn set_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility: Duration,
    ) -> Result<()> {
        let meta = self.meta(queue).await?;
        let h = handle(&meta, receipt)?;
        if meta.leases.lock().dead.contains(receipt) {
            return Err(MessagingError::invalid_receipt(
                queue.as_str(),
                "the message was dead-lettered under this receipt",
            ));
        }
        self.client()?
            .change_message_visibility()
            .queue_url(&meta.url)
            .receipt_handle(h)
            .visibility_timeout(secs(visibility))
            .send()
            .await
            .map_err(|e| {
                self.gone(
                    queue,
                    self.mapper("change_message_visibility", queue.as_str())
                        .map(e),
                )
            })?;
        let mut leases = meta.leases.lock();
        if visibility.is_zero() {
            leases.held.remove(receipt);
        } else if let Some(held) = leases.held.get_mut(receipt) {
            held.ends = Instant::now() + visibility;
        }
        Ok(())
    }

    /// Copies the leased message to the dead-letter queue with the reason, then deletes it.
    pub(super) async fn dead_letter_leased(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let meta = self.meta(queue).await?;
        handle(&meta, receipt)?;
        let message = {
            let leases = meta.leases.lock();
            if leases.dead.contains(receipt) {
                return Err(MessagingError::invalid_receipt(
                    queue.as_str(),
                    "the message was already dead-lettered under this receipt",
                ));
            }
            match leases.held.get(receipt) {
                Some(h) => h.message.clone(),
                None => {
                    return Err(MessagingError::invalid_receipt(
                        queue.as_str(),
                        "this service holds no lease under this receipt (SQS cannot read a \
                         message by receipt, so only the service that received it, within its \
                         lease, can dead-letter it)",
                    ))
                }
            }
        };
        let dlq = queue.dead_letter(&self.settings.dead_letter_suffix)?;
        let target = self.meta(&dlq).await?;
        let info = DeadLetterInfo {
            source_queue: queue.clone(),
            reason: DeadLetterReason::Rejected {
                reason: reason.to_owned(),
            },
            receive_count: message.metadata.receive_count,
            dead_lettered_at: Utc::now(),
            original_enqueued_at: message.metadata.enqueued_at,
        };
        let json = serde_json::to_string(&info).map_err(|e| {
            self.mapper("dead_letter_message", queue.as_str())
                .permanent(format!("cannot encode the dead-letter record: {e}"))
        })?;
        self.send_to(&target, vec![message.to_outgoing()], Some(&json), true)
            .await?;
        let outcome = self.delete_on(&meta, std::slice::from_ref(receipt)).await?;
        if let Some((_, e)) = outcome.rejected.into_iter().next() {
            // The copy is in the dead-letter queue; the original stays (a duplicate, no gap).
            return Err(e);
        }
        meta.leases.lock().mark_dead(receipt);
        Ok(())
    }
}
