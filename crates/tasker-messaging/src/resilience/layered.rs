//! [`Layered`]: a [`Layer`] around an `Arc<dyn MessagingService>`, itself a
//! `MessagingService`. The only place the trait's methods are mapped to requests; every layer
//! of the crate (and of its users) reuses it, so none writes per-operation delegation.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::layer::{AmqpRequest, Layer, Next, PgmqRequest, Request, Response, StreamInfo};
use super::Op;
use crate::error::Result;
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::resources::ResourceRequirements;
use crate::service::{
    AmqpExtensions, Capabilities, ConsumerOptions, DeleteOutcome, ExchangeKind, MessageStream,
    MessagingHealth, MessagingService, PgmqExtensions, ProviderKind, QueueOptions, QueueStats,
};

/// A service with one layer on top. Dereferences to the layer, so a layer's own accessors
/// (`breaker()`, `report()`, `control()`...) are reachable on the wrapped service.
pub struct Layered<L> {
    inner: Arc<dyn MessagingService>,
    layer: L,
}

impl<L: Layer> Layered<L> {
    /// Puts `layer` on top of `inner`.
    pub fn wrap(inner: Arc<dyn MessagingService>, layer: L) -> Self {
        Layered { inner, layer }
    }

    pub fn layer(&self) -> &L {
        &self.layer
    }

    pub(crate) fn layer_mut(&mut self) -> &mut L {
        &mut self.layer
    }

    /// The service below this layer.
    pub fn inner(&self) -> &Arc<dyn MessagingService> {
        &self.inner
    }
}

impl<L> Deref for Layered<L> {
    type Target = L;
    fn deref(&self) -> &L {
        &self.layer
    }
}

/// Calls the layer and takes the response variant the operation answers with.
macro_rules! answer {
    ($self:ident, $op:expr, $request:expr, $variant:pat => $value:expr) => {
        match $self.layer.call($request, Next::new(&*$self.inner)).await? {
            $variant => Ok($value),
            other => Err(other.mismatch($self.inner.provider(), $op)),
        }
    };
}

#[async_trait]
impl<L: Layer> MessagingService for Layered<L> {
    fn provider(&self) -> ProviderKind {
        self.inner.provider()
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn resource_requirements(&self) -> ResourceRequirements {
        self.layer.requirements(Next::new(&*self.inner))
    }
    fn ready(&self) -> Result<()> {
        self.layer.ready(Next::new(&*self.inner))
    }
    async fn initialize(&self) -> Result<()> {
        answer!(self, Op::Initialize, Request::Initialize, Response::Done => ())
    }
    async fn health_check(&self) -> Result<MessagingHealth> {
        answer!(self, Op::HealthCheck, Request::HealthCheck, Response::Health(h) => h)
    }
    async fn shutdown(&self) -> Result<()> {
        answer!(self, Op::Shutdown, Request::Shutdown, Response::Done => ())
    }
    async fn create_queue_with(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        let request = Request::CreateQueue { queue, options };
        answer!(self, Op::CreateQueue, request, Response::Done => ())
    }
    async fn send(&self, queue: &QueueName, message: OutgoingMessage) -> Result<MessageId> {
        let request = Request::Send { queue, message };
        answer!(self, Op::Send, request, Response::MessageId(id) => id)
    }
    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        let request = Request::SendBatch { queue, messages };
        answer!(self, Op::SendBatch, request, Response::MessageIds(ids) => ids)
    }
    async fn receive(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let request = Request::Receive {
            queue,
            max_messages,
            visibility_timeout,
        };
        answer!(self, Op::Receive, request, Response::Messages(m) => m)
    }
    async fn delete_message(&self, queue: &QueueName, receipt: &ReceiptHandle) -> Result<()> {
        let request = Request::DeleteMessage { queue, receipt };
        answer!(self, Op::DeleteMessage, request, Response::Done => ())
    }
    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let request = Request::DeleteMessages { queue, receipts };
        answer!(self, Op::DeleteMessages, request, Response::Deleted(o) => o)
    }
    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        let request = Request::ChangeVisibility {
            queue,
            receipt,
            visibility_timeout,
        };
        answer!(self, Op::ChangeVisibility, request, Response::Done => ())
    }
    async fn dead_letter_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let request = Request::DeadLetter {
            queue,
            receipt,
            reason,
        };
        answer!(self, Op::DeadLetter, request, Response::Done => ())
    }
    /// Naming only (no I/O): answered by the provider, not a call layers see.
    fn dead_letter_queue_name(&self, queue: &QueueName) -> Result<QueueName> {
        self.inner.dead_letter_queue_name(queue)
    }
    async fn redrive_dead_letters(&self, queue: &QueueName, max_messages: usize) -> Result<u64> {
        let request = Request::Redrive {
            queue,
            max_messages,
        };
        answer!(self, Op::Redrive, request, Response::Count(n) => n)
    }
    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats> {
        answer!(self, Op::Stats, Request::Stats { queue }, Response::Stats(s) => s)
    }
    async fn purge_queue(&self, queue: &QueueName) -> Result<u64> {
        answer!(self, Op::Purge, Request::Purge { queue }, Response::Count(n) => n)
    }
    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        answer!(self, Op::DeleteQueue, Request::DeleteQueue { queue }, Response::Done => ())
    }
    async fn wait_for_messages(&self, queue: &QueueName, max_wait: Duration) {
        let started = tokio::time::Instant::now();
        let request = Request::WaitForMessages { queue, max_wait };
        if let Err(error) = self.layer.call(request, Next::new(&*self.inner)).await {
            // A failed wait must not turn a consumer's idle loop into a spin.
            tracing::debug!(%queue, %error, "a layer failed a wait; sleeping it out");
            tokio::time::sleep_until(started + max_wait).await;
        }
    }
    fn native_consumer_stream(
        &self,
        queue: &QueueName,
        options: &ConsumerOptions,
    ) -> Option<MessageStream> {
        if !self.layer.allows_native_stream() {
            return None;
        }
        let stream = self.inner.native_consumer_stream(queue, options)?;
        let info = StreamInfo {
            queue,
            options,
            provider: self.inner.provider(),
        };
        Some(self.layer.stream(&info, stream))
    }
    /// This service itself, so extension calls pass the layer too.
    fn pgmq(&self) -> Option<&dyn PgmqExtensions> {
        self.inner.pgmq().map(|_| self as &dyn PgmqExtensions)
    }
    /// This service itself, so extension calls pass the layer too.
    fn amqp(&self) -> Option<&dyn AmqpExtensions> {
        self.inner.amqp().map(|_| self as &dyn AmqpExtensions)
    }
}

#[async_trait]
impl<L: Layer> PgmqExtensions for Layered<L> {
    async fn create_queue_with_vt(&self, queue: &QueueName, vt: Duration) -> Result<()> {
        let request = Request::Pgmq(PgmqRequest::CreateQueueWithVt { queue, vt });
        answer!(self, Op::PgmqCreateQueueWithVt, request, Response::Done => ())
    }
    async fn read_batch(
        &self,
        queue: &QueueName,
        vt: Duration,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>> {
        let request = Request::Pgmq(PgmqRequest::ReadBatch { queue, vt, limit });
        answer!(self, Op::PgmqReadBatch, request, Response::Messages(m) => m)
    }
    async fn archive_messages(&self, queue: &QueueName, msg_ids: &[i64]) -> Result<u64> {
        let request = Request::Pgmq(PgmqRequest::Archive { queue, msg_ids });
        answer!(self, Op::PgmqArchive, request, Response::Count(n) => n)
    }
    async fn get_metrics(&self, queue: &QueueName) -> Result<Value> {
        let request = Request::Pgmq(PgmqRequest::Metrics { queue });
        answer!(self, Op::PgmqMetrics, request, Response::Json(v) => v)
    }
}

#[async_trait]
impl<L: Layer> AmqpExtensions for Layered<L> {
    async fn declare_exchange(&self, name: &str, kind: ExchangeKind, durable: bool) -> Result<()> {
        let request = Request::Amqp(AmqpRequest::DeclareExchange {
            name,
            kind,
            durable,
        });
        answer!(self, Op::AmqpDeclareExchange, request, Response::Done => ())
    }
    async fn bind_queue(&self, queue: &QueueName, exchange: &str, routing_key: &str) -> Result<()> {
        let request = Request::Amqp(AmqpRequest::BindQueue {
            queue,
            exchange,
            routing_key,
        });
        answer!(self, Op::AmqpBindQueue, request, Response::Done => ())
    }
    async fn publish_to_exchange(
        &self,
        exchange: &str,
        routing_key: &str,
        message: OutgoingMessage,
    ) -> Result<MessageId> {
        let request = Request::Amqp(AmqpRequest::Publish {
            exchange,
            routing_key,
            message,
        });
        answer!(self, Op::AmqpPublish, request, Response::MessageId(id) => id)
    }
    async fn set_qos(&self, prefetch_count: u16) -> Result<()> {
        let request = Request::Amqp(AmqpRequest::SetQos { prefetch_count });
        answer!(self, Op::AmqpSetQos, request, Response::Done => ())
    }
    async fn create_consumer_stream(
        &self,
        queue: &QueueName,
        options: &ConsumerOptions,
    ) -> Result<MessageStream> {
        let request = Request::Amqp(AmqpRequest::ConsumerStream { queue, options });
        let stream = answer!(self, Op::AmqpConsumerStream, request, Response::Stream(s) => s)?;
        let info = StreamInfo {
            queue,
            options,
            provider: self.inner.provider(),
        };
        Ok(self.layer.stream(&info, stream))
    }
}
