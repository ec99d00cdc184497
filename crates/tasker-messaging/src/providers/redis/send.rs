//! Sending: a batch is one script (`scripts::SEND`) that numbers the messages, writes one
//! hash each and adds them to `ready` (or `delayed`), then publishes one wakeup.

use super::scripts::SEND;
use super::{RedisMessageService, MAX_BATCH};
use crate::error::{MessagingError, Result};
use crate::message::{MessageId, OutgoingMessage};
use crate::queue_name::QueueName;
use crate::service::ProviderKind;

impl RedisMessageService {
    /// Refuses the whole batch before any I/O when one payload is too large.
    pub(super) fn check_payloads(&self, messages: &[OutgoingMessage]) -> Result<()> {
        let max = self.settings.max_payload_bytes;
        match messages.iter().find(|m| m.payload.len() > max) {
            Some(m) => Err(MessagingError::PayloadTooLarge {
                size: m.payload.len(),
                max,
            }),
            None => Ok(()),
        }
    }

    pub(super) async fn send_many(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        if messages.len() > MAX_BATCH {
            return Err(MessagingError::Provider {
                provider: ProviderKind::Redis,
                operation: "send",
                message: format!(
                    "batch of {} exceeds the largest batch of {MAX_BATCH}; nothing was sent",
                    messages.len()
                ),
                retryable: false,
            });
        }
        self.check_payloads(&messages)?;
        let mut conn = self.link()?.conn();
        let ids: Vec<MessageId> = messages.iter().map(|m| m.message_id).collect();
        if messages.is_empty() {
            return Ok(ids);
        }
        let info = self.info(queue);
        let mut invocation = SEND.prepare_invoke();
        invocation
            .key(&info.keys.meta)
            .arg(&info.keys.base)
            .arg(messages.len());
        let mut id_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let mut cid_buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        for m in &messages {
            let cid: &str = match m.correlation_id {
                Some(c) => c.0.hyphenated().encode_lower(&mut cid_buf),
                None => "",
            };
            invocation
                .arg(&*m.message_id.0.hyphenated().encode_lower(&mut id_buf))
                .arg(cid)
                .arg(delay_ms(m))
                .arg(&m.payload[..]);
        }
        let _: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "send", Some(queue)))?;
        Ok(ids)
    }
}

/// The delay in whole milliseconds, rounded up (a delay never ends early).
#[inline]
fn delay_ms(m: &OutgoingMessage) -> u64 {
    let us = m.delay.as_micros();
    us.div_ceil(1000).min(u128::from(u64::MAX / 2)) as u64
}
