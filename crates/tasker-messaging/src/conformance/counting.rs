//! A transparent wrapper that counts calls to `receive` and `wait_for_messages`, so the suite
//! can tell a consumer that waits from one that spins.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::resources::ResourceRequirements;
use crate::service::{
    AmqpExtensions, Capabilities, ConsumerOptions, DeleteOutcome, MessageStream, MessagingHealth,
    MessagingService, PgmqExtensions, ProviderKind, QueueOptions, QueueStats,
};

/// Delegates everything to `inner`, counting receives.
pub struct CountingService {
    inner: Arc<dyn MessagingService>,
    receives: AtomicU64,
}

impl CountingService {
    pub fn new(inner: Arc<dyn MessagingService>) -> Self {
        CountingService {
            inner,
            receives: AtomicU64::new(0),
        }
    }

    /// Calls to `receive` so far.
    pub fn receives(&self) -> u64 {
        self.receives.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl MessagingService for CountingService {
    fn provider(&self) -> ProviderKind {
        self.inner.provider()
    }
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    fn resource_requirements(&self) -> ResourceRequirements {
        self.inner.resource_requirements()
    }
    async fn initialize(&self) -> Result<()> {
        self.inner.initialize().await
    }
    async fn health_check(&self) -> Result<MessagingHealth> {
        self.inner.health_check().await
    }
    async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown().await
    }
    async fn create_queue_with(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        self.inner.create_queue_with(queue, options).await
    }
    async fn send(&self, queue: &QueueName, message: OutgoingMessage) -> Result<MessageId> {
        self.inner.send(queue, message).await
    }
    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        self.inner.send_batch(queue, messages).await
    }
    async fn receive(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        self.receives.fetch_add(1, Ordering::Relaxed);
        self.inner
            .receive(queue, max_messages, visibility_timeout)
            .await
    }
    async fn delete_message(&self, queue: &QueueName, receipt: &ReceiptHandle) -> Result<()> {
        self.inner.delete_message(queue, receipt).await
    }
    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        self.inner.delete_messages(queue, receipts).await
    }
    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        self.inner
            .change_message_visibility(queue, receipt, visibility_timeout)
            .await
    }
    async fn dead_letter_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        self.inner.dead_letter_message(queue, receipt, reason).await
    }
    fn dead_letter_queue_name(&self, queue: &QueueName) -> Result<QueueName> {
        self.inner.dead_letter_queue_name(queue)
    }
    async fn redrive_dead_letters(&self, queue: &QueueName, max_messages: usize) -> Result<u64> {
        self.inner.redrive_dead_letters(queue, max_messages).await
    }
    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats> {
        self.inner.get_queue_stats(queue).await
    }
    async fn purge_queue(&self, queue: &QueueName) -> Result<u64> {
        self.inner.purge_queue(queue).await
    }
    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.inner.delete_queue(queue).await
    }
    async fn wait_for_messages(&self, queue: &QueueName, max_wait: Duration) {
        self.inner.wait_for_messages(queue, max_wait).await
    }
    fn native_consumer_stream(
        &self,
        queue: &QueueName,
        options: &ConsumerOptions,
    ) -> Option<MessageStream> {
        self.inner.native_consumer_stream(queue, options)
    }
    fn pgmq(&self) -> Option<&dyn PgmqExtensions> {
        self.inner.pgmq()
    }
    fn amqp(&self) -> Option<&dyn AmqpExtensions> {
        self.inner.amqp()
    }
}
