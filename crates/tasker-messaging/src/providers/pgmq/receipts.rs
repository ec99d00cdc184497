//! Receipts and the operations that take one. A receipt is `(msg_id, read_ct)` plus the
//! queue's tag; every statement here checks it against the row in the same statement
//! (receipt fencing), so a lease that ended cannot delete, extend or dead-letter the message.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::codec::duration_ms;
use super::{PgmqMessageService, QueueMeta};
use crate::error::{MessagingError, Result};
use crate::message::{DeadLetterReason, ReceiptHandle};
use crate::queue_name::QueueName;
use crate::service::DeleteOutcome;

/// The tag of `queue` carried in its receipts: its name and its incarnation (the queue
/// table's OID, new each time the queue is created), so a receipt of another queue, or of
/// the same name before `delete_queue` + `create_queue` (msg ids restart at 1), is refused.
pub(super) fn queue_tag(queue: &QueueName, incarnation: i64) -> u32 {
    // Stable across processes (receipts cross process boundaries): both parts come from the
    // database.
    let mut key = Vec::with_capacity(queue.as_str().len() + 9);
    key.extend_from_slice(queue.as_str().as_bytes());
    key.push(b'/');
    key.extend_from_slice(&incarnation.to_be_bytes());
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, &key);
    (id.as_u128() >> 96) as u32
}

impl PgmqMessageService {
    fn receipt_parts(
        &self,
        queue: &QueueName,
        meta: &QueueMeta,
        receipt: &ReceiptHandle,
    ) -> Result<(i64, i32)> {
        let bad = |why: &str| MessagingError::invalid_receipt(queue.as_str(), why);
        let (msg_id, lease) = receipt.as_pair().ok_or_else(|| bad("not a pgmq receipt"))?;
        if (lease >> 32) as u32 != meta.tag {
            return Err(bad("the receipt belongs to another queue"));
        }
        let msg_id = i64::try_from(msg_id).map_err(|_| bad("message id out of range"))?;
        let read_ct = (lease & 0xffff_ffff) as u32;
        let read_ct = i32::try_from(read_ct).map_err(|_| bad("receive count out of range"))?;
        if read_ct == 0 {
            return Err(bad("not a lease"));
        }
        Ok((msg_id, read_ct))
    }

    pub(super) async fn delete_leased(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let meta = self.meta(queue).await?;
        let mut outcome = DeleteOutcome::default();
        let mut ids = Vec::with_capacity(receipts.len());
        let mut counts = Vec::with_capacity(receipts.len());
        let mut valid = Vec::with_capacity(receipts.len());
        for receipt in receipts {
            match self.receipt_parts(queue, &meta, receipt) {
                Ok((id, ct)) => {
                    ids.push(id);
                    counts.push(ct);
                    valid.push(receipt);
                }
                Err(e) => outcome.rejected.push((receipt.clone(), e)),
            }
        }
        if ids.is_empty() {
            return Ok(outcome);
        }
        // The statement checks each id against its first receipt: a repeated id goes newest
        // receipt (highest read_ct) first. Receipts of one receive come in msg_id order, so
        // usually one pass proves there is no repeat and nothing is copied.
        let repeated = !ids.windows(2).all(|w| w[0] < w[1]) && {
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.windows(2).any(|w| w[0] == w[1])
        };
        let reordered: Option<(Vec<i64>, Vec<i32>)> = repeated.then(|| {
            let mut pairs: Vec<(i64, i32)> =
                ids.iter().copied().zip(counts.iter().copied()).collect();
            pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            pairs.into_iter().unzip()
        });
        let (bound_ids, bound_counts) = match &reordered {
            Some((i, c)) => (i.as_slice(), c.as_slice()),
            None => (ids.as_slice(), counts.as_slice()),
        };
        let rows: Vec<(i64, i32, Option<i32>, bool)> = sqlx::query_as(&meta.sql.delete)
            .bind(bound_ids)
            .bind(bound_counts)
            .fetch_all(self.pool()?)
            .await
            .map_err(|e| self.err(e, "delete", Some(queue)))?;
        // Receipts whose message is still there under another lease, or lives on as a dead
        // letter moved under this lease (never reported as deleted).
        let refused: std::collections::HashMap<(i64, i32), MessagingError> = rows
            .into_iter()
            .filter_map(|(id, ct, current, dead_lettered)| {
                let error = match (current, dead_lettered) {
                    (Some(_), _) => Self::lease_error(queue, Some(0)),
                    (None, true) => MessagingError::invalid_receipt(
                        queue.as_str(),
                        "the message was moved to the dead-letter queue",
                    ),
                    (None, false) => return None,
                };
                Some(((id, ct), error))
            })
            .collect();
        for ((receipt, id), ct) in valid.into_iter().zip(ids).zip(counts) {
            if let Some(error) = refused.get(&(id, ct)) {
                outcome.rejected.push((receipt.clone(), error.clone()));
            } else {
                // Deleted now, or already gone (idempotent).
                outcome.deleted += 1;
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
        let meta = self.meta(queue).await?;
        let (msg_id, read_ct) = self.receipt_parts(queue, &meta, receipt)?;
        let (updated, _notified, current_ct): (i64, i64, Option<i32>) =
            sqlx::query_as(&meta.sql.set_vt)
                .bind(msg_id)
                .bind(read_ct)
                .bind(duration_ms(visibility_timeout))
                .bind(queue.as_str())
                .fetch_one(self.pool()?)
                .await
                .map_err(|e| self.err(e, "change visibility", Some(queue)))?;
        if updated == 1 {
            Ok(())
        } else {
            Err(Self::lease_error(queue, current_ct))
        }
    }

    pub(super) async fn dead_letter_leased(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let meta = self.meta(queue).await?;
        let (msg_id, read_ct) = self.receipt_parts(queue, &meta, receipt)?;
        let reason = DeadLetterReason::Rejected {
            reason: reason.to_owned(),
        };
        self.dead_letter_raw(queue, meta, msg_id, read_ct, &reason)
            .await
    }

    /// Moves the leased message `(msg_id, read_ct)` to the dead-letter queue with `reason`
    /// (explicit dead-lettering, and undecodable rows found by a receive).
    pub(super) async fn dead_letter_raw(
        &self,
        queue: &QueueName,
        meta: Arc<QueueMeta>,
        msg_id: i64,
        read_ct: i32,
        reason: &DeadLetterReason,
    ) -> Result<()> {
        let meta = self.ensure_dead_letter_queue(queue, meta).await?;
        let Some(statement) = meta.sql.dead_letter.as_deref() else {
            return Err(MessagingError::queue_not_found(&format!(
                "{queue}{}",
                self.settings.dead_letter_suffix
            )));
        };
        let reason = serde_json::to_value(reason).map_err(|e| MessagingError::Serialization {
            direction: crate::error::SerdeDirection::Encode,
            type_name: "DeadLetterReason",
            message: e.to_string(),
        })?;
        let (moved, _woke, current_ct): (i64, i64, Option<i32>) = sqlx::query_as(statement)
            .bind(msg_id)
            .bind(read_ct)
            .bind(queue.as_str())
            .bind(sqlx::types::Json(reason))
            .bind(meta.dead_letter_queue.as_ref().map(|d| d.as_str()))
            .fetch_one(self.pool()?)
            .await
            .map_err(|e| self.err(e, "dead-letter", Some(queue)))?;
        if moved == 1 {
            Ok(())
        } else {
            Err(Self::lease_error(queue, current_ct))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_tags_are_stable_and_distinct() {
        let a = QueueName::new("orders").unwrap();
        let b = QueueName::new("orders_dlq").unwrap();
        assert_eq!(queue_tag(&a, 7), queue_tag(&a, 7));
        assert_ne!(queue_tag(&a, 7), queue_tag(&b, 7));
        // The same name created again is another queue for receipts.
        assert_ne!(queue_tag(&a, 7), queue_tag(&a, 8));
    }
}
