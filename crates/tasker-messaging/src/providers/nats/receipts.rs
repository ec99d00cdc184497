//! Receipts are the delivery's ack subject (`$JS.ACK.<q>.tasker.<delivered>.<seq>...`):
//! checked to name this queue's consumer, then acked (delete), NAKed with a delay (visibility)
//! or copied to the dead-letter queue and acked. JetStream 2.9 accepts an ack of an earlier
//! delivery of a message still pending, so receipts are not fenced (see `mod.rs`).

use std::time::Duration;

use super::codec::{self, parse_ack_subject, AckMeta};
use super::errors::{invalid, NO_MESSAGE_FOUND};
use super::receive::nak_for;
use super::{subject_of, NatsMessageService, QueueMeta, CONSUMER};
use crate::error::{MessagingError, Result};
use crate::message::{DeadLetterInfo, DeadLetterReason, ReceiptHandle};
use crate::queue_name::QueueName;
use crate::service::DeleteOutcome;

impl NatsMessageService {
    /// The receipt's ack subject, when it names a delivery of this queue's consumer, of the
    /// queue as it is now (not an earlier queue of the same name).
    #[inline]
    fn receipt_parts<'a>(
        queue: &QueueName,
        meta: &QueueMeta,
        receipt: &'a ReceiptHandle,
    ) -> Result<AckMeta<'a>> {
        let text = receipt
            .as_text()
            .ok_or_else(|| invalid(queue, "not a NATS receipt"))?;
        let parts = parse_ack_subject(text).ok_or_else(|| invalid(queue, "malformed receipt"))?;
        if parts.stream != queue.as_str() || parts.consumer != CONSUMER {
            return Err(invalid(queue, "the receipt belongs to another queue"));
        }
        if parts.timestamp_ns < meta.created_ns {
            return Err(invalid(
                queue,
                "the receipt is from before the queue was deleted and created again",
            ));
        }
        Ok(parts)
    }

    /// Publishes `+ACK` to every subject and waits for the server's answer to the last one:
    /// the server handles one connection's acks in order, so all are done when it answers.
    /// No answer at all (no consumer) is `QueueNotFound`.
    pub(super) async fn ack_subjects(
        &self,
        queue: &QueueName,
        subjects: &[async_nats::Subject],
    ) -> Result<()> {
        let link = self.link()?;
        let Some((last, rest)) = subjects.split_last() else {
            return Ok(());
        };
        for s in rest {
            link.client
                .publish(s.clone(), bytes::Bytes::from_static(b"+ACK"))
                .await
                .map_err(|e| self.err("ack", Some(queue), e))?;
        }
        self.confirm(queue, last.clone(), bytes::Bytes::from_static(b"+ACK"))
            .await
    }

    /// Sends `body` to an ack subject and waits for the server's answer.
    async fn confirm(
        &self,
        queue: &QueueName,
        subject: async_nats::Subject,
        body: bytes::Bytes,
    ) -> Result<()> {
        let link = self.link()?;
        match link.client.request(subject, body).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.note_missing(queue, self.err("ack", Some(queue), e))),
        }
    }

    pub(super) async fn delete_leased(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let meta = self.meta(queue).await?;
        let mut outcome = DeleteOutcome::default();
        let mut subjects = Vec::with_capacity(receipts.len());
        for r in receipts {
            match Self::receipt_parts(queue, &meta, r) {
                Ok(_) => subjects.push(async_nats::Subject::from(r.as_text().unwrap_or_default())),
                Err(e) => outcome.rejected.push((r.clone(), e)),
            }
        }
        if subjects.is_empty() {
            return Ok(outcome);
        }
        self.ack_subjects(queue, &subjects).await?;
        outcome.deleted = subjects.len();
        Ok(outcome)
    }

    pub(super) async fn set_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        let meta = self.meta(queue).await?;
        Self::receipt_parts(queue, &meta, receipt)?;
        let subject = async_nats::Subject::from(receipt.as_text().unwrap_or_default());
        self.confirm(queue, subject, nak_for(visibility_timeout))
            .await
    }

    /// Copies the leased message (read back from its stream by sequence) to the dead-letter
    /// queue with the reason, then acks it. A message already gone is `InvalidReceipt`.
    pub(super) async fn dead_letter_leased(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let meta = self.meta(queue).await?;
        let parts = Self::receipt_parts(queue, &meta, receipt)?;
        let Some(dlq) = meta.dead_letter_queue.clone() else {
            return Err(MessagingError::Provider {
                provider: crate::service::ProviderKind::Nats,
                operation: "dead_letter_message",
                message: format!("queue {queue} was created without a dead-letter queue"),
                retryable: false,
            });
        };
        let link = self.link()?;
        let stream = link
            .js
            .get_stream_no_info(queue.as_str())
            .await
            .map_err(|e| self.err("dead_letter_message", Some(queue), e))?;
        let original = match stream.get_raw_message(parts.stream_seq).await {
            Ok(m) => m,
            Err(e) => {
                let text = e.to_string();
                if text.contains(&format!("error code {NO_MESSAGE_FOUND}"))
                    || matches!(
                        e.kind(),
                        async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                    )
                {
                    return Err(invalid(queue, "the message is no longer in the queue"));
                }
                return Err(
                    self.note_missing(queue, self.err("dead_letter_message", Some(queue), e))
                );
            }
        };
        let info = DeadLetterInfo {
            source_queue: queue.clone(),
            reason: DeadLetterReason::Rejected {
                reason: reason.to_owned(),
            },
            receive_count: u32::try_from(parts.delivered).unwrap_or(u32::MAX),
            dead_lettered_at: chrono::Utc::now(),
            original_enqueued_at: codec::time_of(original.time.unix_timestamp_nanos()),
        };
        let headers = codec::moved_headers(Some(&original.headers), Some(&info));
        link.js
            .publish_with_headers(subject_of(&dlq), headers, original.payload)
            .await
            .map_err(|e| self.err("dead_letter_message (publish)", Some(&dlq), e))?
            .await
            .map_err(|e| self.err("dead_letter_message (publish ack)", Some(&dlq), e))?;
        let subject = async_nats::Subject::from(receipt.as_text().unwrap_or_default());
        self.confirm(queue, subject, bytes::Bytes::from_static(b"+ACK"))
            .await
    }
}
