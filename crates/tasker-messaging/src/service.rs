//! The object-safe service every provider implements, and what it declares about itself.
//!
//! [`MessagingService`] is used as `Arc<dyn MessagingService>`, chosen at runtime from
//! configuration (see [`crate::build_service`]). It moves payload bytes; the typed layer
//! ([`crate::MessagingServiceExt`]) adds serde on top. The contract every implementation keeps
//! is `docs/semantics.md`, checked by the `conformance` module (feature `conformance`).

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::error::{MessagingError, Result};
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::resources::ResourceRequirements;

/// Which backend a service talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    #[serde(alias = "memory", alias = "in-memory")]
    InMemory,
    Pgmq,
    #[serde(alias = "rabbit_mq", alias = "amqp")]
    Rabbitmq,
    Sqs,
    Redis,
    Kafka,
    Nats,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 7] = [
        ProviderKind::InMemory,
        ProviderKind::Pgmq,
        ProviderKind::Rabbitmq,
        ProviderKind::Sqs,
        ProviderKind::Redis,
        ProviderKind::Kafka,
        ProviderKind::Nats,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::InMemory => "in_memory",
            ProviderKind::Pgmq => "pgmq",
            ProviderKind::Rabbitmq => "rabbitmq",
            ProviderKind::Sqs => "sqs",
            ProviderKind::Redis => "redis",
            ProviderKind::Kafka => "kafka",
            ProviderKind::Nats => "nats",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = MessagingError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "in_memory" | "memory" => Ok(ProviderKind::InMemory),
            "pgmq" => Ok(ProviderKind::Pgmq),
            "rabbitmq" | "rabbit_mq" | "amqp" => Ok(ProviderKind::Rabbitmq),
            "sqs" => Ok(ProviderKind::Sqs),
            "redis" => Ok(ProviderKind::Redis),
            "kafka" => Ok(ProviderKind::Kafka),
            "nats" => Ok(ProviderKind::Nats),
            _ => Err(MessagingError::config(
                "provider",
                format!(
                    "unknown provider {s:?}; expected one of in_memory, pgmq, rabbitmq, sqs, redis, kafka, nats"
                ),
            )),
        }
    }
}

/// One optional part of the contract. Used in [`MessagingError::Unsupported`] and to name the
/// reason a conformance case was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    DelayedSend,
    LeaseExtension,
    DeadLetterQueues,
    FifoOrder,
    ExchangeRouting,
    PushConsumer,
    TransactionalSend,
    ReceiptFencing,
    DetailedStats,
    WakeupNotifications,
    DurableLeases,
    PgmqExtensions,
    AmqpExtensions,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Capability::DelayedSend => "delayed_send",
            Capability::LeaseExtension => "lease_extension",
            Capability::DeadLetterQueues => "dead_letter_queues",
            Capability::FifoOrder => "fifo_order",
            Capability::ExchangeRouting => "exchange_routing",
            Capability::PushConsumer => "push_consumer",
            Capability::TransactionalSend => "transactional_send",
            Capability::ReceiptFencing => "receipt_fencing",
            Capability::DetailedStats => "detailed_stats",
            Capability::WakeupNotifications => "wakeup_notifications",
            Capability::DurableLeases => "durable_leases",
            Capability::PgmqExtensions => "pgmq_extensions",
            Capability::AmqpExtensions => "amqp_extensions",
        };
        f.write_str(s)
    }
}

/// What a provider declares about itself. The conformance suite skips a case only when a
/// capability it needs is declared absent, and says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// `OutgoingMessage::delay` is honoured.
    pub delayed_send: bool,
    /// `change_message_visibility(d > 0)` extends or moves a lease.
    pub lease_extension: bool,
    /// Messages over `max_receive_count` move to `<queue><suffix>`; `redrive_dead_letters` works.
    pub dead_letter_queues: bool,
    /// Dead-lettering is done by the backend itself (informational).
    pub native_dead_letter: bool,
    /// One producer's messages are received in send order when nothing is redelivered.
    pub fifo_order: bool,
    /// `amqp()` returns the AMQP extensions.
    pub exchange_routing: bool,
    /// The consumer stream is a native push subscription, not receive in a loop.
    pub push_consumer: bool,
    /// Sends can join a caller's database transaction.
    pub transactional_send: bool,
    /// A receipt whose lease expired and was handed to another receiver is rejected.
    pub receipt_fencing: bool,
    /// Stats report in-flight and delayed counts and the oldest message's age.
    pub detailed_stats: bool,
    /// `wait_for_messages` returns as soon as a message arrives instead of sleeping.
    pub wakeup_notifications: bool,
    /// A lease outlives the connection that took it: a receiver that disconnects without
    /// acking leaves the message hidden until the lease ends (PGMQ, SQS). Without it the
    /// backend hands the message back when the receiver's connection closes (AMQP).
    pub durable_leases: bool,
    /// `pgmq()` returns the PGMQ extensions.
    pub pgmq_extensions: bool,
    /// Largest payload accepted.
    pub max_payload_bytes: usize,
    /// Largest `send_batch` / `receive` size in one call.
    pub max_batch_size: usize,
    /// Visibility timeouts and delays are rounded up to a multiple of this.
    pub timer_resolution: Duration,
}

impl Capabilities {
    pub fn supports(&self, capability: Capability) -> bool {
        match capability {
            Capability::DelayedSend => self.delayed_send,
            Capability::LeaseExtension => self.lease_extension,
            Capability::DeadLetterQueues => self.dead_letter_queues,
            Capability::FifoOrder => self.fifo_order,
            Capability::ExchangeRouting | Capability::AmqpExtensions => self.exchange_routing,
            Capability::PushConsumer => self.push_consumer,
            Capability::TransactionalSend => self.transactional_send,
            Capability::ReceiptFencing => self.receipt_fencing,
            Capability::DetailedStats => self.detailed_stats,
            Capability::WakeupNotifications => self.wakeup_notifications,
            Capability::DurableLeases => self.durable_leases,
            Capability::PgmqExtensions => self.pgmq_extensions,
        }
    }

    /// The capabilities as (name, supported) pairs, for tables and `--json`.
    pub fn flags(&self) -> Vec<(Capability, bool)> {
        [
            Capability::DelayedSend,
            Capability::LeaseExtension,
            Capability::DeadLetterQueues,
            Capability::FifoOrder,
            Capability::ExchangeRouting,
            Capability::PushConsumer,
            Capability::TransactionalSend,
            Capability::ReceiptFencing,
            Capability::DetailedStats,
            Capability::WakeupNotifications,
            Capability::DurableLeases,
            Capability::PgmqExtensions,
        ]
        .into_iter()
        .map(|c| (c, self.supports(c)))
        .collect()
    }
}

/// Per-queue settings at creation. `None` takes the service's configured default
/// (`[queues]` in the configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueOptions {
    /// Receipts before a message is dead-lettered. `Some(0)` disables dead-lettering.
    pub max_receive_count: Option<u32>,
}

impl QueueOptions {
    pub fn with_max_receive_count(max: u32) -> Self {
        QueueOptions {
            max_receive_count: Some(max),
        }
    }
}

/// Queue statistics for monitoring (the plan's `QueueStats`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueueStats {
    pub queue_name: QueueName,
    /// Messages receivable now.
    pub message_count: u64,
    /// Messages received and not yet deleted whose lease has not ended.
    pub in_flight_count: Option<u64>,
    /// Messages sent with a delay that has not passed.
    pub delayed_count: Option<u64>,
    /// Age of the oldest message in the queue, in any state; `None` when empty.
    pub oldest_message_age_seconds: Option<f64>,
    /// Messages in the queue's dead-letter queue.
    pub dead_letter_count: Option<u64>,
}

impl QueueStats {
    /// Visible + in-flight + delayed (unknown parts count as zero).
    pub fn total(&self) -> u64 {
        self.message_count + self.in_flight_count.unwrap_or(0) + self.delayed_count.unwrap_or(0)
    }
}

/// Health of a messaging service, compatible with the executors' health states.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MessagingHealth {
    Healthy { queue_depth: u64, in_flight: u64 },
    Degraded { reason: String },
    Unhealthy { error: String },
}

impl MessagingHealth {
    pub fn is_healthy(&self) -> bool {
        matches!(self, MessagingHealth::Healthy { .. })
    }
}

/// Result of a batch delete: how many receipts took effect, and which were refused.
#[derive(Debug, Default)]
pub struct DeleteOutcome {
    /// Receipts that deleted their message, or whose message was already gone (idempotent).
    pub deleted: usize,
    /// Receipts refused, with why (stale lease, malformed).
    pub rejected: Vec<(ReceiptHandle, MessagingError)>,
}

/// A stream of received messages. Each item holds a lease; delete or release it.
pub type MessageStream = Pin<Box<dyn Stream<Item = Result<ReceivedMessage>> + Send>>;

/// Settings for a consumer stream.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// Messages fetched per receive.
    pub batch_size: usize,
    /// Lease taken on each message.
    pub visibility_timeout: Duration,
    /// First pause after an empty receive.
    pub min_idle_backoff: Duration,
    /// Longest pause while idle: bounds latency when a provider has no wakeups.
    pub max_idle_backoff: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            batch_size: 10,
            visibility_timeout: Duration::from_secs(30),
            min_idle_backoff: Duration::from_millis(1),
            max_idle_backoff: Duration::from_millis(250),
        }
    }
}

/// The pull-based contract every provider implements (see `docs/semantics.md`).
///
/// All methods take `&self`: a service is shared as `Arc<dyn MessagingService>` by every
/// executor, stream and layer. Operations on a queue that does not exist fail with
/// [`MessagingError::QueueNotFound`]; nothing creates queues implicitly except `create_queue`.
#[async_trait]
pub trait MessagingService: Send + Sync + 'static {
    /// Which backend this is.
    fn provider(&self) -> ProviderKind;

    /// What this provider supports; constant for the life of the service.
    fn capabilities(&self) -> &Capabilities;

    /// What the service will hold once initialized (connections, memory), checked against
    /// [`crate::SystemResourceLimits`] before `initialize` by [`crate::build_service`].
    fn resource_requirements(&self) -> ResourceRequirements {
        ResourceRequirements::default()
    }

    /// Whether a call made now would be admitted: `Err(CircuitOpen)` while a circuit breaker
    /// layer in this service is open. Cheap and without I/O; lets a layer above (retry) stop
    /// before waiting. Providers keep the default.
    fn ready(&self) -> Result<()> {
        Ok(())
    }

    /// Connects, prepares the backend. Idempotent; safe to call concurrently.
    async fn initialize(&self) -> Result<()>;

    /// Current health, with queue depth when healthy.
    async fn health_check(&self) -> Result<MessagingHealth>;

    /// Releases connections and background tasks. Further calls fail with `NotInitialized`.
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }

    /// Creates the queue (and its dead-letter queue) if missing. Idempotent.
    async fn create_queue_with(&self, queue: &QueueName, options: &QueueOptions) -> Result<()>;

    /// `create_queue_with` with the configured defaults.
    async fn create_queue(&self, queue: &QueueName) -> Result<()> {
        self.create_queue_with(queue, &QueueOptions::default())
            .await
    }

    /// Sends one message; returns its message id once the backend holds it durably (as
    /// durable as the backend is). Defaults to a batch of one: override it only where a
    /// single send is measurably cheaper than the batch path.
    async fn send(&self, queue: &QueueName, message: OutgoingMessage) -> Result<MessageId> {
        let id = message.message_id;
        self.send_batch(queue, vec![message]).await?;
        Ok(id)
    }

    /// Sends messages in as few round trips as the backend allows; returns their ids in order.
    /// All or nothing where the backend allows; otherwise an error means some may have been
    /// sent. The primitive every provider implements; `send` defaults to it.
    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>>;

    /// Leases up to `max_messages` receivable messages for `visibility_timeout`. Returns at
    /// once (possibly empty); use [`MessagingService::wait_for_messages`] or a consumer stream
    /// to wait.
    async fn receive(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>>;

    /// Acknowledges: deletes the message for good. Idempotent for the receipt's own lease.
    /// Defaults to a batch of one (a refused receipt is the error): override it only where a
    /// single delete is measurably cheaper than the batch path.
    async fn delete_message(&self, queue: &QueueName, receipt: &ReceiptHandle) -> Result<()> {
        let outcome = self
            .delete_messages(queue, std::slice::from_ref(receipt))
            .await?;
        match outcome.rejected.into_iter().next() {
            Some((_, error)) => Err(error),
            None => Ok(()),
        }
    }

    /// Deletes many messages in one round trip where the backend allows: refused receipts
    /// (stale lease, malformed) are reported in the outcome, not as the error. The primitive
    /// every provider implements; `delete_message` defaults to it.
    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome>;

    /// Moves the end of a lease to now + `visibility_timeout`: zero releases the message at
    /// once (nack), a duration retries later or extends a lease still being worked on.
    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()>;

    /// Moves a leased message to the dead-letter queue now, recording `reason`.
    async fn dead_letter_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()>;

    /// The name of `queue`'s dead-letter queue under this service's configuration.
    fn dead_letter_queue_name(&self, queue: &QueueName) -> Result<QueueName>;

    /// Moves up to `max_messages` from the queue's dead-letter queue back to the queue, ids
    /// and payloads preserved, receive count reset. Returns how many moved.
    async fn redrive_dead_letters(&self, queue: &QueueName, max_messages: usize) -> Result<u64>;

    /// Counts and ages (the plan's `get_queue_stats`).
    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats>;

    /// Removes every message (not the dead letters); returns how many.
    async fn purge_queue(&self, queue: &QueueName) -> Result<u64>;

    /// Removes the queue, its messages and its dead-letter queue.
    async fn delete_queue(&self, queue: &QueueName) -> Result<()>;

    /// Waits until a message may be receivable on `queue`, at most `max_wait`. The default
    /// sleeps `max_wait`; providers with notifications return as soon as one arrives. A
    /// spurious early return is allowed; callers receive again.
    async fn wait_for_messages(&self, queue: &QueueName, max_wait: Duration) {
        let _ = queue;
        tokio::time::sleep(max_wait).await;
    }

    /// A native push stream, for providers that have one (`push_consumer`). `None` makes
    /// [`crate::ConsumerExt::consume`] use receive in a loop with idle backoff.
    fn native_consumer_stream(
        &self,
        queue: &QueueName,
        options: &ConsumerOptions,
    ) -> Option<MessageStream> {
        let _ = (queue, options);
        None
    }

    /// The PGMQ extensions, when this service is backed by PGMQ.
    fn pgmq(&self) -> Option<&dyn PgmqExtensions> {
        None
    }

    /// The AMQP extensions, when this service is backed by an AMQP broker.
    fn amqp(&self) -> Option<&dyn AmqpExtensions> {
        None
    }
}

/// PGMQ-specific operations, reached through [`MessagingService::pgmq`].
#[async_trait]
pub trait PgmqExtensions: Send + Sync {
    /// Creates a queue whose reads default to visibility timeout `vt`.
    async fn create_queue_with_vt(&self, queue: &QueueName, vt: Duration) -> Result<()>;
    /// pgmq.read: up to `limit` messages leased for `vt`, in one round trip.
    async fn read_batch(
        &self,
        queue: &QueueName,
        vt: Duration,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>>;
    /// pgmq.archive: moves messages to the archive table by PGMQ message id; returns how many.
    async fn archive_messages(&self, queue: &QueueName, msg_ids: &[i64]) -> Result<u64>;
    /// pgmq.metrics as JSON.
    async fn get_metrics(&self, queue: &QueueName) -> Result<serde_json::Value>;
}

/// AMQP exchange types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeKind {
    Direct,
    Topic,
    Fanout,
    Headers,
}

impl std::str::FromStr for ExchangeKind {
    type Err = MessagingError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "direct" => Ok(ExchangeKind::Direct),
            "topic" => Ok(ExchangeKind::Topic),
            "fanout" => Ok(ExchangeKind::Fanout),
            "headers" => Ok(ExchangeKind::Headers),
            other => Err(MessagingError::config(
                "exchange_type",
                format!(
                    "unknown exchange type {other:?}; expected direct, topic, fanout or headers"
                ),
            )),
        }
    }
}

/// AMQP-specific operations, reached through [`MessagingService::amqp`].
#[async_trait]
pub trait AmqpExtensions: Send + Sync {
    async fn declare_exchange(&self, name: &str, kind: ExchangeKind, durable: bool) -> Result<()>;
    async fn bind_queue(&self, queue: &QueueName, exchange: &str, routing_key: &str) -> Result<()>;
    /// Publishes with publisher confirms; returns once the broker confirmed.
    async fn publish_to_exchange(
        &self,
        exchange: &str,
        routing_key: &str,
        message: OutgoingMessage,
    ) -> Result<MessageId>;
    /// Prefetch for consumer channels (fair dispatch).
    async fn set_qos(&self, prefetch_count: u16) -> Result<()>;
    /// A native push consumer (basic_consume) on `queue`.
    async fn create_consumer_stream(
        &self,
        queue: &QueueName,
        options: &ConsumerOptions,
    ) -> Result<MessageStream>;
}
