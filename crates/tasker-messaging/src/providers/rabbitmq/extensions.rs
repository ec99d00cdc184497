//! [`AmqpExtensions`]: exchanges, bindings, publishing to an exchange, prefetch and push
//! consumer streams.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::FieldTable;

use super::connection::Declaration;
use super::{codec, stream, RabbitMqMessageService};
use crate::error::Result;
use crate::message::{MessageId, OutgoingMessage};
use crate::queue_name::QueueName;
use crate::service::{AmqpExtensions, ConsumerOptions, ExchangeKind, MessageStream};

#[async_trait]
impl AmqpExtensions for RabbitMqMessageService {
    async fn declare_exchange(&self, name: &str, kind: ExchangeKind, durable: bool) -> Result<()> {
        let inner = &self.inner;
        let link = inner.link().await?;
        let ch = link.admin(inner.errors()).await?;
        let kind = match kind {
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Headers => lapin::ExchangeKind::Headers,
        };
        let r = ch
            .exchange_declare(
                name.into(),
                kind.clone(),
                ExchangeDeclareOptions {
                    durable,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        link.give_back(ch);
        r.map_err(|e| inner.map("exchange.declare", None, e))?;
        inner.connector.record(Declaration::Exchange {
            name: name.to_owned(),
            kind,
            durable,
        });
        Ok(())
    }

    async fn bind_queue(&self, queue: &QueueName, exchange: &str, routing_key: &str) -> Result<()> {
        let inner = &self.inner;
        let link = inner.link().await?;
        let ch = link.admin(inner.errors()).await?;
        let r = ch
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        link.give_back(ch);
        r.map_err(|e| inner.map("queue.bind", Some(queue), e))?;
        inner.connector.record(Declaration::Binding {
            queue: queue.as_str().to_owned(),
            exchange: exchange.to_owned(),
            key: routing_key.to_owned(),
        });
        Ok(())
    }

    async fn publish_to_exchange(
        &self,
        exchange: &str,
        routing_key: &str,
        message: OutgoingMessage,
    ) -> Result<MessageId> {
        let inner = &self.inner;
        inner.check_payload(message.payload.len())?;
        let id = message.message_id;
        // An exchange that routes nowhere is not an error (fan-out to no subscriber).
        let item = vec![(
            message.payload.clone(),
            codec::outgoing_properties(&message),
        )];
        inner
            .publish_confirmed(exchange, routing_key, false, item, None)
            .await?;
        Ok(id)
    }

    async fn set_qos(&self, prefetch_count: u16) -> Result<()> {
        self.inner
            .prefetch
            .store(prefetch_count.max(1), Ordering::Relaxed);
        Ok(())
    }

    async fn create_consumer_stream(
        &self,
        queue: &QueueName,
        options: &ConsumerOptions,
    ) -> Result<MessageStream> {
        // Fail now on a missing queue rather than on the first poll.
        let link = self.inner.link().await?;
        self.inner.ready_count(&link, queue).await?;
        Ok(stream::push_stream(
            self.inner.clone(),
            queue.clone(),
            options.clone(),
        ))
    }
}
