//! Sending: persistent, `mandatory` publishes with publisher confirms (a batch is published in
//! full before its confirms are awaited), and delayed messages through delay queues.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};

use super::admin::durable;
use super::codec::{self, long_string};
use super::connection::Link;
use super::Inner;
use crate::error::{MessagingError, Result};
use crate::message::OutgoingMessage;
use crate::queue_name::QueueName;
use crate::service::ProviderKind;

/// Delays are rounded up to buckets (50 ms up to a second, then 1/16 of a power of two), so
/// a handful of delay queues serve every delay.
fn delay_bucket_ms(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_micros().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .clamp(1, i32::MAX as u64 / 2);
    if ms <= 1000 {
        return ms.div_ceil(50) * 50;
    }
    let step = 1u64 << (63 - ms.leading_zeros() - 4);
    ms.div_ceil(step) * step
}

impl Inner {
    #[inline]
    pub(super) fn check_payload(&self, size: usize) -> Result<()> {
        let max = self.settings.max_payload_bytes;
        if size > max {
            return Err(MessagingError::PayloadTooLarge { size, max });
        }
        Ok(())
    }

    /// Publishes `items` to one confirm channel, all before awaiting any confirm.
    pub(super) async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        items: Vec<(Bytes, BasicProperties)>,
        queue: Option<&QueueName>,
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let link = self.link().await?;
        let ch = link.publisher(self.errors()).await?;
        let mut confirms = Vec::with_capacity(items.len());
        for (payload, props) in items {
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    &payload,
                    props,
                )
                .await
                .map_err(|e| self.map("basic.publish", queue, e))?;
            confirms.push(confirm);
        }
        let mut first_error = None;
        for result in futures::future::join_all(confirms).await {
            let error = match result {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => continue,
                Ok(Confirmation::Ack(Some(returned))) => match queue {
                    Some(q) if returned.reply_code == 312 => MessagingError::QueueNotFound {
                        queue: q.as_str().to_owned(),
                    },
                    _ => MessagingError::Provider {
                        provider: ProviderKind::Rabbitmq,
                        operation: "basic.publish",
                        message: format!(
                            "returned by the broker: {} {}",
                            returned.reply_code, returned.reply_text
                        ),
                        retryable: false,
                    },
                },
                Ok(Confirmation::Nack(_)) => MessagingError::Provider {
                    provider: ProviderKind::Rabbitmq,
                    operation: "basic.publish",
                    message: "the broker refused the message (nack)".into(),
                    retryable: true,
                },
                Err(e) => self.map("publisher confirm", queue, e),
            };
            first_error.get_or_insert(error);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Declares (or re-declares before it could expire) the delay queue for `ms` in front of
    /// `queue`; returns its name.
    async fn delay_queue(&self, link: &Link, queue: &QueueName, ms: u64) -> Result<String> {
        let name = format!("{queue}.delay.{ms}");
        let expires_ms = ms * 2 + 60_000;
        let fresh = self
            .delay_queues
            .lock()
            .get(&name)
            .is_some_and(|(at, epoch)| {
                *epoch == link.epoch && at.elapsed() < Duration::from_millis(expires_ms / 2)
            });
        if fresh {
            return Ok(name);
        }
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("classic"));
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms as i64));
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(expires_ms as i64),
        );
        args.insert("x-dead-letter-exchange".into(), long_string(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            long_string(queue.as_str()),
        );
        let ch = link.admin(self.errors()).await?;
        let r = ch
            .queue_declare(name.as_str().into(), durable(), args)
            .await;
        link.give_back(ch);
        r.map_err(|e| self.map("queue.declare(delay)", None, e))?;
        self.delay_queues
            .lock()
            .insert(name.clone(), (std::time::Instant::now(), link.epoch));
        Ok(name)
    }

    pub(super) async fn send_many(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<()> {
        let (now, delayed): (Vec<_>, Vec<_>) =
            messages.into_iter().partition(|m| m.delay.is_zero());
        let items = now
            .iter()
            .map(|m| (m.payload.clone(), codec::outgoing_properties(m)))
            .collect();
        self.publish_confirmed("", queue.as_str(), true, items, Some(queue))
            .await?;
        if delayed.is_empty() {
            return Ok(());
        }
        // The delay queue dead-letters into the queue, so check the queue exists now.
        let link = self.link().await?;
        self.ready_count(&link, queue).await?;
        let mut by_bucket: HashMap<u64, Vec<(Bytes, BasicProperties)>> = HashMap::new();
        for m in &delayed {
            by_bucket
                .entry(delay_bucket_ms(m.delay))
                .or_default()
                .push((m.payload.clone(), codec::outgoing_properties(m)));
        }
        for (ms, items) in by_bucket {
            let dq = self.delay_queue(&link, queue, ms).await?;
            self.publish_confirmed("", &dq, true, items, None).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_few_buckets() {
        assert_eq!(delay_bucket_ms(Duration::from_millis(1)), 50);
        assert_eq!(delay_bucket_ms(Duration::from_millis(600)), 600);
        assert_eq!(delay_bucket_ms(Duration::from_micros(600_001)), 650);
        for ms in [1_001u64, 5_000, 59_999, 3_600_000] {
            let b = delay_bucket_ms(Duration::from_millis(ms));
            assert!(b >= ms && b <= ms + ms / 16, "{ms} -> {b}");
        }
    }
}
