//! Sending: payload checks before any I/O, then every message of the batch published at
//! once (pipelined) and the server's acknowledgements awaited together.

use super::{codec, subject_of, NatsMessageService};
use crate::error::{MessagingError, Result};
use crate::message::{MessageId, OutgoingMessage};
use crate::queue_name::QueueName;
use crate::service::{Capability, ProviderKind};

impl NatsMessageService {
    /// Refuses the batch before any I/O when a payload is too large or a delay is asked.
    #[inline]
    fn check_batch(&self, messages: &[OutgoingMessage]) -> Result<()> {
        let max = self.capabilities.max_payload_bytes;
        for m in messages {
            if m.payload.len() > max {
                return Err(MessagingError::PayloadTooLarge {
                    size: m.payload.len(),
                    max,
                });
            }
            if !m.delay.is_zero() {
                return Err(MessagingError::Unsupported {
                    provider: ProviderKind::Nats,
                    capability: Capability::DelayedSend,
                });
            }
        }
        Ok(())
    }

    pub(super) async fn send_many(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        self.check_batch(&messages)?;
        let link = self.link()?;
        if messages.is_empty() {
            // Still a missing queue for a missing queue.
            self.meta(queue).await?;
            return Ok(Vec::new());
        }
        let subject: async_nats::Subject = subject_of(queue).into();
        let mut ids = Vec::with_capacity(messages.len());
        let mut acks = Vec::with_capacity(messages.len());
        for m in messages {
            let headers = codec::headers(&m);
            ids.push(m.message_id);
            let ack = link
                .js
                .publish_with_headers(subject.clone(), headers, m.payload)
                .await;
            match ack {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    return Err(self
                        .send_error(queue, self.err("send", Some(queue), e))
                        .await)
                }
            }
        }
        for ack in acks {
            if let Err(e) = ack.await {
                return Err(self
                    .send_error(queue, self.err("send (ack)", Some(queue), e))
                    .await);
            }
        }
        Ok(ids)
    }

    /// A publish nobody answered reads as a missing stream, but a replicated stream that is
    /// electing a leader (a node just died, or the stream was just created) does not answer
    /// either: ask the stream itself, and call it retryable while the stream exists.
    async fn send_error(&self, queue: &QueueName, error: MessagingError) -> MessagingError {
        if !matches!(error, MessagingError::QueueNotFound { .. }) {
            return error;
        }
        match self.stream_info(queue).await {
            Ok(_) => MessagingError::Provider {
                provider: ProviderKind::Nats,
                operation: "send",
                message: "the stream exists but no leader answered the publish (electing?)".into(),
                retryable: true,
            },
            Err(MessagingError::QueueNotFound { .. }) => self.note_missing(queue, error),
            Err(other) if other.is_retryable() => other,
            Err(_) => self.note_missing(queue, error),
        }
    }
}
