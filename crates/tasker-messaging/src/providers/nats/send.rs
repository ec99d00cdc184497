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
                .await
                .map_err(|e| self.note_missing(queue, self.err("send", Some(queue), e)))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| self.note_missing(queue, self.err("send (ack)", Some(queue), e)))?;
        }
        Ok(ids)
    }
}
