//! `send_many`: every message checked before any call (size, delay), then `SendMessageBatch`
//! in chunks of at most 10 messages and 1 MiB, concurrently on standard queues and in order
//! on FIFO queues. A failed entry fails the call with every unsent message id named.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use futures::StreamExt as _;

use super::codec::{
    encode_body, encoded_len, string_attr, ATTR_CORRELATION_ID, ATTR_DEAD_LETTER, ATTR_ENCODING,
    ATTR_MESSAGE_ID,
};
use super::errors::is_retryable_code;
use super::receipts::secs;
use super::settings::{ATTRIBUTE_ALLOWANCE, SQS_MAX_MESSAGE_BYTES};
use super::{QueueMeta, SqsMessageGroups, SqsMessageService};
use crate::error::{MessagingError, Result};
use crate::message::{MessageId, OutgoingMessage};
use crate::queue_name::QueueName;
use crate::service::{Capability, ProviderKind};

/// SQS's longest per-message delay.
pub const SQS_MAX_DELAY: Duration = Duration::from_secs(900);
/// The message group of FIFO queues with one group per queue.
const GROUP: &str = "tasker";

/// One chunk's unsent messages: (index in the batch, code, text).
type Unsent = Vec<(usize, String, String)>;

impl SqsMessageService {
    /// Size and delay checks for a whole batch, before any call.
    fn check_batch(&self, queue: &QueueName, messages: &[OutgoingMessage]) -> Result<()> {
        let max = self.settings.max_payload_bytes;
        for m in messages {
            if m.payload.len() > max {
                return Err(MessagingError::PayloadTooLarge {
                    size: m.payload.len(),
                    max,
                });
            }
            if !m.delay.is_zero() {
                if self.settings.fifo {
                    return Err(MessagingError::Unsupported {
                        provider: ProviderKind::Sqs,
                        capability: Capability::DelayedSend,
                    });
                }
                if m.delay > SQS_MAX_DELAY {
                    return Err(self.mapper("send", queue.as_str()).permanent(format!(
                        "a delay of {:?} exceeds SQS's limit of 15 minutes",
                        m.delay
                    )));
                }
            }
        }
        Ok(())
    }

    pub(super) async fn send_many(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        self.check_batch(queue, &messages)?;
        let meta = self.meta(queue).await?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.send_to(&meta, messages, None, false).await
    }

    fn entry(
        &self,
        index: usize,
        m: &OutgoingMessage,
        dead_letter: Option<&str>,
        again: bool,
    ) -> Result<SendMessageBatchRequestEntry> {
        let bad = |e: aws_sdk_sqs::error::BuildError| {
            self.mapper("send", "")
                .permanent(format!("cannot build the request: {e}"))
        };
        let (body, encoding) = encode_body(&m.payload);
        let mut b = SendMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .message_body(body)
            .message_attributes(
                ATTR_MESSAGE_ID,
                string_attr(m.message_id.to_string()).map_err(bad)?,
            );
        if let Some(c) = m.correlation_id {
            b = b.message_attributes(
                ATTR_CORRELATION_ID,
                string_attr(c.to_string()).map_err(bad)?,
            );
        }
        if let Some(enc) = encoding {
            b = b.message_attributes(ATTR_ENCODING, string_attr(enc).map_err(bad)?);
        }
        if let Some(json) = dead_letter {
            b = b.message_attributes(ATTR_DEAD_LETTER, string_attr(json).map_err(bad)?);
        }
        if self.settings.fifo {
            let group = match (self.settings.message_groups, m.correlation_id) {
                (SqsMessageGroups::PerQueue, _) => GROUP.to_owned(),
                (SqsMessageGroups::PerCorrelationId, Some(c)) => c.to_string(),
                (SqsMessageGroups::PerCorrelationId, None) => m.message_id.to_string(),
            };
            // A copy (redrive, dead letter) must not be dropped as a duplicate of the send
            // that carried the same id within SQS's 5-minute window.
            let dedup = if again {
                format!("{}-{}", m.message_id, uuid::Uuid::now_v7().simple())
            } else {
                m.message_id.to_string()
            };
            b = b.message_group_id(group).message_deduplication_id(dedup);
        } else if !m.delay.is_zero() {
            b = b.delay_seconds(secs(m.delay));
        }
        b.build().map_err(bad)
    }

    /// Sends checked messages to a queue; `dead_letter` adds the record, `again` marks copies
    /// of messages already sent (redrive, dead-lettering).
    pub(super) async fn send_to(
        &self,
        meta: &Arc<QueueMeta>,
        messages: Vec<OutgoingMessage>,
        dead_letter: Option<&str>,
        again: bool,
    ) -> Result<Vec<MessageId>> {
        let client = self.client()?;
        let ids: Vec<MessageId> = messages.iter().map(|m| m.message_id).collect();
        // Chunks of at most 10 entries and 1 MiB.
        let mut chunks: Vec<Vec<SendMessageBatchRequestEntry>> = Vec::new();
        let mut current = Vec::with_capacity(messages.len().min(10));
        let mut bytes = 0;
        for (i, m) in messages.iter().enumerate() {
            let size =
                encoded_len(&m.payload) + ATTRIBUTE_ALLOWANCE + dead_letter.map_or(0, str::len);
            if current.len() == 10 || (!current.is_empty() && bytes + size > SQS_MAX_MESSAGE_BYTES)
            {
                chunks.push(std::mem::take(&mut current));
                bytes = 0;
            }
            current.push(self.entry(i, m, dead_letter, again)?);
            bytes += size;
        }
        chunks.push(current);
        let total = chunks.len();
        let m = self.mapper("send_batch", meta.name.as_str());
        let send = |entries: Vec<SendMessageBatchRequestEntry>| {
            let indexes: Vec<usize> = entries.iter().filter_map(|e| e.id.parse().ok()).collect();
            let call = client
                .send_message_batch()
                .queue_url(&meta.url)
                .set_entries(Some(entries))
                .send();
            async move {
                match call.await {
                    Ok(out) => Ok(out
                        .failed
                        .into_iter()
                        .map(|f| {
                            let code = f.code.clone();
                            let text = f.message.unwrap_or_default();
                            (f.id.parse().unwrap_or(usize::MAX), code, text)
                        })
                        .collect::<Unsent>()),
                    Err(e) => Err((indexes, m.map(e))),
                }
            }
        };
        let mut untried: Vec<usize> = Vec::new();
        let results: Vec<std::result::Result<Unsent, (Vec<usize>, MessagingError)>> =
            if self.settings.fifo {
                let mut out = Vec::with_capacity(total);
                let mut chunks = chunks.into_iter();
                for chunk in chunks.by_ref() {
                    let r = send(chunk).await;
                    let failed = !matches!(&r, Ok(f) if f.is_empty());
                    out.push(r);
                    if failed {
                        break; // later chunks would overtake the failed one
                    }
                }
                for rest in chunks {
                    untried.extend(rest.iter().filter_map(|e| e.id.parse::<usize>().ok()));
                }
                out
            } else {
                futures::stream::iter(chunks)
                    .map(send)
                    .buffer_unordered(self.settings.send_concurrency)
                    .collect()
                    .await
            };
        let mut unsent: Unsent = Vec::new();
        let mut first_error: Option<MessagingError> = None;
        for r in results {
            match r {
                Ok(failed) => unsent.extend(failed),
                Err((indexes, e)) => {
                    let code = if e.is_retryable() {
                        "Retryable"
                    } else {
                        "Error"
                    };
                    unsent.extend(
                        indexes
                            .into_iter()
                            .map(|i| (i, code.to_owned(), e.to_string())),
                    );
                    first_error.get_or_insert(e);
                }
            }
        }
        if unsent.is_empty() && untried.is_empty() {
            return Ok(ids);
        }
        unsent.extend(untried.into_iter().map(|i| {
            (
                i,
                "Retryable".to_owned(),
                "not tried after an earlier chunk failed".to_owned(),
            )
        }));
        let not_sent = unsent.len();
        if let Some(e @ MessagingError::QueueNotFound { .. }) = &first_error {
            if not_sent == ids.len() {
                self.forget(&meta.name);
                return Err(e.clone());
            }
        }
        let retryable = unsent
            .iter()
            .all(|(_, code, _)| code == "Retryable" || is_retryable_code(code));
        let listed: Vec<String> = unsent
            .iter()
            .take(10)
            .map(|(i, code, text)| {
                let id = ids
                    .get(*i)
                    .map_or_else(|| "?".to_owned(), |id| id.to_string());
                format!("{id} ({code}: {})", m.scrub(text))
            })
            .collect();
        Err(MessagingError::Provider {
            provider: ProviderKind::Sqs,
            operation: "send_batch",
            message: format!(
                "{} of {} messages were sent; not sent: {}{}",
                ids.len() - not_sent,
                ids.len(),
                listed.join(", "),
                if unsent.len() > listed.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
            retryable,
        })
    }
}
