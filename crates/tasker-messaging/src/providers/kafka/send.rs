//! `send_many`: payload checks, then every record of the batch handed to the producer at once
//! and their deliveries awaited together (librdkafka batches them into few produce requests).
//! A delay travels as the `tasker-not-before` header; the consumer holds the record until then.

use std::collections::VecDeque;

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureRecord};

use super::codec::{self, Extra};
use super::errors;
use super::KafkaMessageService;
use crate::error::{MessagingError, Result};
use crate::message::{MessageId, OutgoingMessage};
use crate::queue_name::QueueName;

/// One record to write: key (message id), payload, headers.
pub(super) struct Record {
    pub id: MessageId,
    pub payload: Bytes,
    pub headers: Option<OwnedHeaders>,
}

impl KafkaMessageService {
    pub(super) fn check_payload(&self, size: usize) -> Result<()> {
        let max = self.settings.max_payload_bytes;
        if size > max {
            return Err(MessagingError::PayloadTooLarge { size, max });
        }
        Ok(())
    }

    pub(super) async fn send_many(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        for m in &messages {
            self.check_payload(m.payload.len())?;
        }
        self.info(queue).await?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<MessageId> = messages.iter().map(|m| m.message_id).collect();
        let records = messages.into_iter().map(|m| Record {
            headers: codec::headers(&Extra {
                correlation_id: m.correlation_id,
                delay: m.delay,
                ..Extra::default()
            }),
            id: m.message_id,
            payload: m.payload,
        });
        let failed = self
            .produce(queue, records)
            .await
            .into_iter()
            .find_map(|r| r.err());
        match failed {
            Some(e) => Err(e),
            None => Ok(ids),
        }
    }

    /// Writes records to a topic: all handed to the producer, then all deliveries awaited.
    /// One result per record, in order.
    pub(super) async fn produce(
        &self,
        queue: &QueueName,
        records: impl IntoIterator<Item = Record>,
    ) -> Vec<Result<()>> {
        let timeout = self.settings.operation_timeout;
        let topic = queue.as_str();
        let mut pending: VecDeque<std::result::Result<DeliveryFuture, MessagingError>> =
            VecDeque::new();
        let mut results = Vec::new();
        for r in records {
            let key = *r.id.0.as_bytes();
            let mut headers = r.headers;
            loop {
                let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                    .key(&key[..])
                    .payload(&r.payload[..]);
                if let Some(h) = headers.take() {
                    record = record.headers(h);
                }
                match self.shared.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(Ok(delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if !pending.is_empty() =>
                    {
                        // The producer's queue is full: wait for the oldest delivery.
                        headers = back.headers;
                        if let Some(first) = pending.pop_front() {
                            results.push(Self::delivered(queue, first, timeout).await);
                        }
                    }
                    Err((e, _)) => {
                        pending.push_back(Err(errors::map("send", Some(queue), &e, timeout)));
                        break;
                    }
                }
            }
        }
        for p in pending {
            results.push(Self::delivered(queue, p, timeout).await);
        }
        results
    }

    async fn delivered(
        queue: &QueueName,
        pending: std::result::Result<DeliveryFuture, MessagingError>,
        timeout: std::time::Duration,
    ) -> Result<()> {
        match pending?.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(errors::map("send", Some(queue), &e, timeout)),
            Err(_) => Err(errors::provider("send", "the producer was dropped")),
        }
    }
}
