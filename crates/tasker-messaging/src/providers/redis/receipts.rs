//! Operations by receipt. A receipt is (sequence, queue tag << 32 | delivery token); the
//! scripts act only when the queue's tag and the message's current token match (fencing), and
//! answer one code per receipt (see `scripts::DELETE`).

use std::time::Duration;

use super::codec::receipt_parts;
use super::errors::receipt_refusal;
use super::scripts::{DEAD_LETTER, DELETE, VISIBILITY};
use super::RedisMessageService;
use crate::error::{MessagingError, Result};
use crate::message::ReceiptHandle;
use crate::queue_name::QueueName;
use crate::service::DeleteOutcome;

fn malformed(queue: &QueueName) -> MessagingError {
    MessagingError::invalid_receipt(queue.as_str(), "not a receipt of the redis provider")
}

impl RedisMessageService {
    /// Deletes by receipt in one script; malformed receipts are refused without I/O.
    pub(super) async fn delete_leased(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let mut conn = self.link()?.conn();
        let info = self.info(queue);
        let mut outcome = DeleteOutcome::default();
        let mut sent = Vec::with_capacity(receipts.len());
        // One tag per script: receipts of the same queue share it; a different one is refused.
        let tag = receipts.iter().find_map(|r| receipt_parts(r).map(|p| p.1));
        let mut invocation = DELETE.prepare_invoke();
        invocation
            .key(&info.keys.meta)
            .arg(&info.keys.base)
            .arg(tag.unwrap_or(0));
        for r in receipts {
            match receipt_parts(r) {
                Some((seq, t, tok)) if Some(t) == tag => {
                    invocation.arg(seq).arg(tok);
                    sent.push(r);
                }
                Some(_) => outcome.rejected.push((
                    r.clone(),
                    MessagingError::invalid_receipt(
                        queue.as_str(),
                        "the receipt belongs to another queue",
                    ),
                )),
                None => outcome.rejected.push((r.clone(), malformed(queue))),
            }
        }
        // Even with no well-formed receipt the script runs: a missing queue is QueueNotFound.
        let codes: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "delete", Some(queue)))?;
        for (r, code) in sent.into_iter().zip(codes) {
            match code {
                1 | 0 => outcome.deleted += 1,
                other => {
                    if let Some(e) = receipt_refusal(queue, other) {
                        outcome.rejected.push((r.clone(), e));
                    }
                }
            }
        }
        Ok(outcome)
    }

    pub(super) async fn set_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        let mut conn = self.link()?.conn();
        let info = self.info(queue);
        let (seq, tag, tok) = match receipt_parts(receipt) {
            Some(p) => p,
            None => {
                // Still a missing queue first: every operation on one is QueueNotFound.
                self.check_exists(queue).await?;
                return Err(malformed(queue));
            }
        };
        let vt_ms = visibility_timeout.as_micros().div_ceil(1000) as u64;
        let code: i64 = VISIBILITY
            .key(&info.keys.meta)
            .arg(&info.keys.base)
            .arg(tag)
            .arg(seq)
            .arg(tok)
            .arg(vt_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "change_message_visibility", Some(queue)))?;
        match receipt_refusal(queue, code) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    pub(super) async fn dead_letter_leased(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let mut conn = self.link()?.conn();
        let info = self.info(queue);
        let (seq, tag, tok) = match receipt_parts(receipt) {
            Some(p) => p,
            None => {
                self.check_exists(queue).await?;
                return Err(malformed(queue));
            }
        };
        let dlq_base = info.dlq.as_ref().map_or("", |d| d.1.base.as_str());
        let code: i64 = DEAD_LETTER
            .key(&info.keys.meta)
            .arg(&info.keys.base)
            .arg(tag)
            .arg(seq)
            .arg(tok)
            .arg(dlq_base)
            .arg(queue.as_str())
            .arg(reason)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "dead_letter_message", Some(queue)))?;
        match receipt_refusal(queue, code) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}
