//! Metrics for any service: a wrapper that counts messages and times operations with the
//! `metrics` facade, so whichever recorder the application installs (Prometheus in
//! `tasker-mq worker`) sees every provider the same way.
//!
//! Names (all labelled with `provider` and `queue`):
//! `tasker_messages_sent_total`, `tasker_messages_received_total`,
//! `tasker_messages_acked_total`, `tasker_messages_released_total` (visibility changes),
//! `tasker_messages_dead_lettered_total`, `tasker_messaging_errors_total` (also `operation`),
//! and the histogram `tasker_messaging_operation_seconds` (label `operation`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{counter, histogram};

use crate::error::Result;
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::resources::ResourceRequirements;
use crate::service::{
    AmqpExtensions, Capabilities, ConsumerOptions, DeleteOutcome, MessageStream, MessagingHealth,
    MessagingService, PgmqExtensions, ProviderKind, QueueOptions, QueueStats,
};

/// Wraps a service, recording metrics for each call.
pub struct MetricsService {
    inner: Arc<dyn MessagingService>,
    provider: &'static str,
}

impl MetricsService {
    pub fn new(inner: Arc<dyn MessagingService>) -> Self {
        let provider = inner.provider().as_str();
        MetricsService { inner, provider }
    }

    fn observe<T>(
        &self,
        operation: &'static str,
        queue: &QueueName,
        started: Instant,
        result: &Result<T>,
    ) {
        histogram!(
            "tasker_messaging_operation_seconds",
            "provider" => self.provider,
            "operation" => operation
        )
        .record(started.elapsed().as_secs_f64());
        if result.is_err() {
            counter!(
                "tasker_messaging_errors_total",
                "provider" => self.provider,
                "queue" => metrics::SharedString::from(queue.as_shared()),
                "operation" => operation
            )
            .increment(1);
        }
    }

    fn count(&self, name: &'static str, queue: &QueueName, n: u64) {
        if n > 0 {
            let queue = metrics::SharedString::from(queue.as_shared());
            counter!(name, "provider" => self.provider, "queue" => queue).increment(n);
        }
    }
}

#[async_trait]
impl MessagingService for MetricsService {
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
        let started = Instant::now();
        let result = self.inner.send(queue, message).await;
        self.observe("send", queue, started, &result);
        if result.is_ok() {
            self.count("tasker_messages_sent_total", queue, 1);
        }
        result
    }
    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        let started = Instant::now();
        let result = self.inner.send_batch(queue, messages).await;
        self.observe("send_batch", queue, started, &result);
        if let Ok(ids) = &result {
            self.count("tasker_messages_sent_total", queue, ids.len() as u64);
        }
        result
    }
    async fn receive(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let started = Instant::now();
        let result = self
            .inner
            .receive(queue, max_messages, visibility_timeout)
            .await;
        self.observe("receive", queue, started, &result);
        if let Ok(got) = &result {
            self.count("tasker_messages_received_total", queue, got.len() as u64);
        }
        result
    }
    async fn delete_message(&self, queue: &QueueName, receipt: &ReceiptHandle) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.delete_message(queue, receipt).await;
        self.observe("delete", queue, started, &result);
        if result.is_ok() {
            self.count("tasker_messages_acked_total", queue, 1);
        }
        result
    }
    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let started = Instant::now();
        let result = self.inner.delete_messages(queue, receipts).await;
        self.observe("delete_batch", queue, started, &result);
        if let Ok(outcome) = &result {
            self.count("tasker_messages_acked_total", queue, outcome.deleted as u64);
        }
        result
    }
    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        let started = Instant::now();
        let result = self
            .inner
            .change_message_visibility(queue, receipt, visibility_timeout)
            .await;
        self.observe("change_visibility", queue, started, &result);
        if result.is_ok() {
            self.count("tasker_messages_released_total", queue, 1);
        }
        result
    }
    async fn dead_letter_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let started = Instant::now();
        let result = self.inner.dead_letter_message(queue, receipt, reason).await;
        self.observe("dead_letter", queue, started, &result);
        if result.is_ok() {
            self.count("tasker_messages_dead_lettered_total", queue, 1);
        }
        result
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

#[cfg(all(test, feature = "in-memory"))]
mod tests {
    use super::*;
    use crate::InMemoryMessageService;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    #[test]
    fn counts_messages_per_queue() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let svc = MetricsService::new(Arc::new(InMemoryMessageService::default()));
                let q = QueueName::new("metrics_q").unwrap();
                svc.create_queue(&q).await.unwrap();
                let batch = (0..3).map(|i| OutgoingMessage::new(vec![i])).collect();
                svc.send_batch(&q, batch).await.unwrap();
                let got = svc.receive(&q, 10, Duration::from_secs(30)).await.unwrap();
                let receipts: Vec<_> = got[..2].iter().map(|m| m.receipt().clone()).collect();
                svc.delete_messages(&q, &receipts).await.unwrap();
                svc.dead_letter_message(&q, got[2].receipt(), "bad")
                    .await
                    .unwrap();
                let missing = QueueName::new("metrics_missing").unwrap();
                assert!(svc.send(&missing, OutgoingMessage::new("x")).await.is_err());
            });
        });
        let counters: std::collections::HashMap<String, u64> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Counter(n) => {
                    let labels: Vec<String> =
                        key.key().labels().map(|l| l.value().to_owned()).collect();
                    Some((format!("{}{labels:?}", key.key().name()), n))
                }
                _ => None,
            })
            .collect();
        let get = |name: &str| {
            counters
                .iter()
                .find(|(k, _)| k.starts_with(name) && k.contains("metrics_q"))
                .map(|(_, v)| *v)
        };
        assert_eq!(get("tasker_messages_sent_total"), Some(3), "{counters:?}");
        assert_eq!(get("tasker_messages_received_total"), Some(3));
        assert_eq!(get("tasker_messages_acked_total"), Some(2));
        assert_eq!(get("tasker_messages_dead_lettered_total"), Some(1));
        assert!(
            counters
                .keys()
                .any(|k| k.starts_with("tasker_messaging_errors_total")
                    && k.contains("metrics_missing")),
            "{counters:?}"
        );
    }
}
