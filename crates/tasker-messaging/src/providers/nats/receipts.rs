//! Receipts are the delivery's ack subject (`$JS.ACK.<q>.tasker.<delivered>.<seq>...`):
//! checked to name this queue's consumer, then acked (delete), NAKed with a delay (visibility)
//! or copied to the dead-letter queue and acked. JetStream 2.9 accepts an ack of an earlier
//! delivery of a message still pending, so receipts are not fenced (see `mod.rs`).

use std::time::Duration;

use super::codec::{self, parse_ack_subject, AckMeta};
use super::connection::Settling;
use super::errors::{invalid, NO_MESSAGE_FOUND};
use super::receive::nak_for;
use super::{subject_of, NatsMessageService, QueueMeta, CONSUMER};
use crate::error::{MessagingError, Result};
use crate::message::{DeadLetterInfo, DeadLetterReason, ReceiptHandle};
use crate::queue_name::QueueName;
use crate::service::DeleteOutcome;

/// The first wait before asking a replicated stream again whether acked messages are gone.
const REMOVAL_FIRST_BACKOFF: Duration = Duration::from_millis(1);
/// The longest wait between two such questions.
const REMOVAL_MAX_BACKOFF: Duration = Duration::from_millis(32);

/// Given the sorted acked sequences and `found`, the first message the stream still stores at
/// or after the lowest one asked about: every acked sequence below `found` is gone, so the
/// next to ask about is the first at or after it, and whether that one is `found` itself
/// (still there).
#[inline]
fn skip_gone(seqs: &[u64], found: u64) -> (usize, bool) {
    let i = seqs.partition_point(|&s| s < found);
    (i, seqs.get(i) == Some(&found))
}

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
    /// On a replicated stream that answer comes before the stream has removed the messages,
    /// so their removal is then confirmed ([`Self::confirm_removed`]).
    /// No answer at all (no consumer) is `QueueNotFound`.
    pub(super) async fn ack_subjects(
        &self,
        queue: &QueueName,
        meta: &QueueMeta,
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
            .await?;
        if meta.replicated {
            let seqs = subjects
                .iter()
                .filter_map(|s| parse_ack_subject(s.as_str()).map(|p| p.stream_seq))
                .collect();
            self.confirm_removed(queue, meta, seqs).await?;
        }
        Ok(())
    }

    /// Waits until the stream leader (which answers stats) no longer holds any of `seqs`.
    ///
    /// In a clustered JetStream (2.9) the consumer leader answers an ack once it has proposed
    /// it to the consumer's replicas; each server removes a work-queue message from its own
    /// copy of the stream when its consumer replica applies the ack. So the answer can come
    /// before the stream leader has removed the message. This asks the stream leader for the
    /// first stored message at or after the lowest unconfirmed sequence (`next_by_subj`, one
    /// request skips every acked sequence already gone), and while one of `seqs` is still
    /// there (or the question failed retryably: the stream electing a leader), waits a short,
    /// doubling backoff and asks again, until `request_timeout`: then a retryable `Timeout`
    /// (the acks stand; deleting the same receipts again is harmless).
    pub(super) async fn confirm_removed(
        &self,
        queue: &QueueName,
        meta: &QueueMeta,
        mut seqs: Vec<u64>,
    ) -> Result<()> {
        seqs.sort_unstable();
        seqs.dedup();
        let mut settling = Settling::new(
            REMOVAL_FIRST_BACKOFF,
            REMOVAL_MAX_BACKOFF,
            self.settings.request_timeout,
        );
        let mut i = 0;
        while let Some(&from) = seqs.get(i) {
            let still_there = match self.next_stored(queue, meta, from).await {
                Ok(None) => return Ok(()),
                Ok(Some(found)) => {
                    let (next, there) = skip_gone(&seqs, found);
                    i = next;
                    there
                }
                // The stream electing a leader (a node died): asked again, within the time.
                Err(e) if e.is_retryable() => {
                    if settling.wait().await {
                        continue;
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            if still_there && !settling.wait().await {
                return Err(MessagingError::Timeout {
                    operation: "delete (the replicated stream still holds an acked message)",
                    after: self.settings.request_timeout,
                });
            }
        }
        Ok(())
    }

    /// The sequence of the first message the stream (its leader) stores at or after `from`,
    /// if any.
    async fn next_stored(
        &self,
        queue: &QueueName,
        meta: &QueueMeta,
        from: u64,
    ) -> Result<Option<u64>> {
        #[derive(serde::Deserialize)]
        struct Got {
            message: Stored,
        }
        #[derive(serde::Deserialize)]
        struct Stored {
            seq: u64,
        }
        let answer = self
            .api::<Got, _>(
                "delete (confirm removal)",
                format!("STREAM.MSG.GET.{queue}"),
                &serde_json::json!({"seq": from, "next_by_subj": meta.subject.as_str()}),
            )
            .await?;
        match answer {
            Ok(got) => Ok(Some(got.message.seq)),
            Err(e) if e.error_code().0 == NO_MESSAGE_FOUND => Ok(None),
            Err(e) => {
                Err(self.note_missing(queue, self.api_err("delete (confirm removal)", queue, &e)))
            }
        }
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
        self.ack_subjects(queue, &meta, &subjects).await?;
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
        self.ack_subjects(queue, &meta, std::slice::from_ref(&subject))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::skip_gone;

    #[test]
    fn one_answer_skips_every_acked_sequence_already_gone() {
        let acked = [3, 4, 5, 9, 10];
        // 3..=5 gone, 6 is someone else's message: ask next about 9.
        assert_eq!(skip_gone(&acked, 6), (3, false));
        // 9 still stored: wait and ask about 9 again.
        assert_eq!(skip_gone(&acked, 9), (3, true));
        // The lowest is still there.
        assert_eq!(skip_gone(&acked, 3), (0, true));
        // Everything acked is below the first stored message: done.
        assert_eq!(skip_gone(&acked, 11), (5, false));
    }
}
