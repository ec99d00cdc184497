//! The Kafka provider (rdkafka over librdkafka): a queue over a log, with per-message acks
//! over offsets.
//!
//! Kafka keeps records in partitions and one committed offset per partition and consumer
//! group; it has no per-message ack, no visibility timeout and no dead-letter queue. This
//! provider builds them in the consumer, the way Confluent's parallel-consumer does:
//!
//! * a queue is the topic `<queue>` (`KafkaSettings::partitions`, 1 by default), read by the
//!   consumer group `tasker-<queue>`; its dead-letter queue is the topic `<queue><suffix>`,
//!   its options one record in `<queue>-meta` (see `admin.rs`);
//! * the queue's consumer fetches records into a lease table (`leases.rs`); `receive` leases
//!   ready records for their visibility timeout, an ended lease makes the record ready again
//!   (counted), and acks mark records done: only the contiguous done prefix of a partition is
//!   committed (stored, and committed every `commit_interval` and on close);
//! * a consumer assigned a partition starts reading up to 1,000 records before its committed
//!   offset and skips them (a fetch inside a record batch gets nothing on tansu 0.6; see
//!   `connection.rs`);
//! * receive counts are kept in the table (and carried in a `tasker-receive-count` header on
//!   copies that carry one); a record at its limit is copied to the dead-letter topic with a
//!   [`DeadLetterInfo`](crate::DeadLetterInfo) header and then acked;
//! * a delayed send carries its due time in a header; the consumer holds the record until then.
//!
//! # What Kafka cannot give
//!
//! * **Leases do not outlive the process** (`durable_leases` false): a consumer that dies
//!   or leaves its group gives its partitions to another member, which reads every record
//!   after the last commit again, leased or not, with its receive count starting over (the
//!   count lives in the process). At least once: a record acked less than `commit_interval`
//!   before a crash, or behind an unacked one, can be delivered again.
//! * **One member per process.** Kafka gives a partition to one group member, so every
//!   service in a process shares one consumer per queue (see `connection.rs`); across
//!   processes a queue's messages are spread by partition: with one partition, one process
//!   receives at a time.
//! * **`fifo_order`** holds per partition; it is declared for the queue only when its topic
//!   has one partition. Stats count what this process has fetched plus the unread records
//!   after the committed offset (`detailed_stats` false).
//!
//! # Files
//!
//! * `mod.rs`: the service, its capabilities, the `MessagingService` impl.
//! * `settings.rs`: [`KafkaSettings`] from `[connection.kafka]` / `KAFKA_BROKERS` and `[queues]`.
//! * `connection.rs`: producer, admin client, per-queue consumers and their fetchers, shared
//!   per process; lifecycle and health.
//! * `codec.rs`: a message as a record (key, headers) and back.
//! * `errors.rs`: rdkafka's errors and refused receipts as `MessagingError`s.
//! * `receipts.rs`: delete / visibility / dead-letter by receipt; copies to other topics.
//! * `send.rs`: payload checks, producing a batch and awaiting its deliveries.
//! * `receive.rs`: leasing from the table, dead-lettering over the limit, `wait`.
//! * `admin.rs`: topics, options, delete / purge / stats / redrive.
//! * `extensions.rs`: none, by design.
//!
//! Kafka's own file: `leases.rs` (the lease table and the committed prefix).

mod admin;
mod codec;
mod connection;
mod errors;
mod extensions;
mod leases;
mod receipts;
mod receive;
mod send;
mod settings;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use self::connection::Shared;
pub use self::settings::KafkaSettings;
use crate::config::MessagingConfig;
use crate::error::Result;
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::resources::ResourceRequirements;
use crate::service::{
    Capabilities, DeleteOutcome, MessagingHealth, MessagingService, ProviderKind, QueueOptions,
    QueueStats,
};

/// The largest payload accepted, below Kafka's default 1 MB record limit.
const MAX_RECORD_PAYLOAD: usize = 960 * 1024;

/// The Kafka `MessagingService`.
pub struct KafkaMessageService {
    shared: Arc<Shared>,
    settings: KafkaSettings,
    capabilities: Capabilities,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for KafkaMessageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaMessageService")
            .field("settings", &self.settings)
            .finish()
    }
}

impl KafkaMessageService {
    /// Builds the service (clients are created, nothing is asked of the brokers yet).
    pub fn new(mut settings: KafkaSettings) -> Result<Self> {
        settings.validate()?;
        // A record (payload, key, headers) must fit librdkafka's and the broker's default
        // message size (1 MB).
        settings.max_payload_bytes = settings.max_payload_bytes.min(MAX_RECORD_PAYLOAD);
        let shared = Shared::get(&settings)?;
        let capabilities = Capabilities {
            delayed_send: true,
            lease_extension: true,
            dead_letter_queues: true,
            native_dead_letter: false,
            fifo_order: settings.partitions == 1,
            exchange_routing: false,
            push_consumer: false,
            transactional_send: false,
            receipt_fencing: true,
            detailed_stats: false,
            wakeup_notifications: true,
            durable_leases: false,
            pgmq_extensions: false,
            max_payload_bytes: settings.max_payload_bytes,
            max_batch_size: 10_000,
            timer_resolution: Duration::from_millis(1),
        };
        Ok(KafkaMessageService {
            shared,
            settings,
            capabilities,
            shut_down: AtomicBool::new(false),
        })
    }

    pub fn from_config(config: &MessagingConfig) -> Result<Self> {
        Self::new(KafkaSettings::from_config(config)?)
    }
}

#[async_trait]
impl MessagingService for KafkaMessageService {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Kafka
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn resource_requirements(&self) -> ResourceRequirements {
        ResourceRequirements::default()
    }

    async fn initialize(&self) -> Result<()> {
        self.connect().await
    }

    async fn health_check(&self) -> Result<MessagingHealth> {
        self.health().await
    }

    async fn shutdown(&self) -> Result<()> {
        self.stop().await
    }

    async fn create_queue_with(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        self.create_with(queue, options).await
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        self.send_many(queue, messages).await
    }

    async fn receive(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        self.receive_many(queue, max_messages, visibility_timeout)
            .await
    }

    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        self.delete_leased(queue, receipts).await
    }

    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        self.set_visibility(queue, receipt, visibility_timeout)
            .await
    }

    async fn dead_letter_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        self.dead_letter_leased(queue, receipt, reason).await
    }

    fn dead_letter_queue_name(&self, queue: &QueueName) -> Result<QueueName> {
        queue.dead_letter(&self.settings.dead_letter_suffix)
    }

    async fn redrive_dead_letters(&self, queue: &QueueName, max_messages: usize) -> Result<u64> {
        self.redrive(queue, max_messages).await
    }

    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats> {
        self.stats(queue).await
    }

    async fn purge_queue(&self, queue: &QueueName) -> Result<u64> {
        self.purge(queue).await
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.remove_queue(queue).await
    }

    async fn wait_for_messages(&self, queue: &QueueName, max_wait: Duration) {
        self.wait(queue, max_wait).await
    }
}
