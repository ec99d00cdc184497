//! The RabbitMQ provider (lapin, AMQP 0-9-1).
//!
//! AMQP has no visibility timeout, no receive count on classic queues and no delayed delivery
//! without a plugin, so the provider builds each part of the contract from plain AMQP:
//!
//! * **Leases**: a received message stays unacked on the channel that got it, so no other
//!   receiver gets it; when its visibility timeout ends, a reaper task nacks it with requeue
//!   and it comes back (see `leases.rs`). `change_message_visibility(0)` nacks at once; `d > 0`
//!   moves the end of the lease. A lease also ends when its connection breaks (the broker
//!   requeues), which is still at least once.
//! * **Receive count**: quorum queues (the default) count deliveries (`x-delivery-count`);
//!   on classic queues a released message is published again with its count in a header,
//!   and the delivery acked, in one AMQP transaction (`channel.rs`: never two live copies),
//!   so the count is real there too.
//! * **Dead letters**: quorum queues are declared with `x-delivery-limit = max - 1` and a
//!   dead-letter exchange, so the broker itself moves a message to `<queue>_dlq` when it
//!   comes back the `max`-th time, intact, at least once (3.10+); the dead-letter routing key
//!   `<queue>.<max>` stores the limit with the queue, where other processes read it
//!   (`limits.rs`). On classic queues the provider does the same when it releases the
//!   message. An explicit `dead_letter_message` publishes a copy with the reason and acks the
//!   original in one transaction. With the limit disabled, RabbitMQ 4.0+ quorum queues get
//!   `x-delivery-limit: -1` (their default of 20 would drop messages; `version.rs`).
//! * **Delays**: a delayed send goes to a delay queue whose queue-wide TTL is the delay
//!   (rounded up to a bucket), which dead-letters back into the queue when it expires. One
//!   TTL per delay queue means no head-of-line blocking; unused delay queues expire. They
//!   are classic queues, so that way back is the broker's at-most-once dead-lettering.
//! * **Publishing**: persistent, `mandatory` (a missing queue is `QueueNotFound`), with
//!   publisher confirms; a batch is published in full before its confirms are awaited.
//! * **Receiving**: one `basic.get` (which also says how many are ready), then the rest of
//!   the batch through a short-lived consumer whose prefetch is the batch (a quorum queue
//!   commits each `basic.get` through Raft, one after another). Acks of a batch are one
//!   `multiple` ack where the tags allow it; acks never wait for the broker.
//! * **Push consumer**: `basic.consume` with prefetch (see `stream.rs`); it reconnects and
//!   resubscribes after the connection breaks.
//! * **Waiting**: `wait_for_messages` subscribes with prefetch 1 and keeps the first message
//!   that arrives, leased, for this service's next `receive` (see `wait.rs`): idle workers
//!   wake on a send from any connection instead of sleeping out their idle wait.
//! * **Recovery**: a broken connection (broker restart, `close_all_connections`) is rebuilt by
//!   the next call, which first declares again every exchange, queue and binding this service
//!   declared (see `connection.rs`), so transient topology comes back and a broker that lost
//!   its data gets the queues again before anything is published.
//! * **TLS**: an `amqps://` URL connects through rustls, trusting the system's certificate
//!   authorities plus an optional private CA, with an optional client certificate
//!   ([`RabbitMqTls`]); the files are read and checked when the service is built.
//!
//! What AMQP cannot give, and what the provider does instead:
//!
//! * A lease lives on the connection that received the message: receipts are
//!   `(service nonce, lease id)` and only that service can settle them (not another process).
//!   A dropped service keeps its leases for their full visibility timeout; a closed
//!   connection ends them early (the broker requeues: still at least once).
//! * AMQP cannot delete a message that was handed back to the queue, so a message whose lease
//!   ended stays held for `leases::EXPIRED_HOLD` (or until this service receives from the
//!   queue) and its old receipt still deletes it meanwhile; after that the receipt is
//!   refused (`InvalidReceipt`) even before the message is received again.
//! * Stats: the visible count is the broker's; `in_flight_count` is the leases this service
//!   holds (AMQP does not report unacked counts); delayed count and oldest age are unknown
//!   (`detailed_stats` is false). `purge_queue` removes ready messages and those waiting in
//!   the delay queues this service declared, not messages under lease.
//! * RabbitMQ closes a channel whose delivery stays unacked past `consumer_timeout` (30
//!   minutes by default), so longer leases need that raised (a warning is logged).
//! * Messages a push stream prefetched but never yielded, and messages a wait kept that no
//!   receive claimed, are given back without counting: published again with their count
//!   (the broker's folded into `x-tasker-receive-count`) and acked, in one transaction. A
//!   process that dies holding them still has the broker requeue them, and a quorum queue
//!   counts that.
//!
//! # Files
//!
//! Laid out like every provider (see docs/providers.md); the trait impl below only checks
//! arguments and delegates:
//!
//! * `mod.rs`: the service struct and `Inner` (shared with push streams), its capabilities,
//!   the `MessagingService` impl.
//! * `settings.rs`: [`RabbitMqSettings`] and [`RabbitMqTls`] from `[connection.rabbitmq]`.
//! * `connection.rs`: the connection, its channel pools, re-declaring topology after a
//!   reconnect, health and shutdown.
//! * `codec.rs`: a message to AMQP properties and headers and back.
//! * `errors.rs`: lapin errors and refused receipts as [`MessagingError`](crate::MessagingError)s.
//! * `receipts.rs`: delete / visibility / dead-letter by receipt, and ending leases
//!   (release, requeue with a count, dead-letter at the limit).
//! * `send.rs`: confirmed publishing, delay queues.
//! * `receive.rs`: `basic.get` plus a consumer window, leasing what arrives.
//! * `admin.rs`: declaring queues with their dead-letter topology, purge / stats / delete /
//!   redrive.
//! * `version.rs`: the broker's version (a probe of `connection.start`) and the quorum
//!   arguments that depend on it; `limits.rs`: a queue's `max_receive_count` read back from
//!   its arguments.
//! * `extensions.rs`: [`AmqpExtensions`].
//!
//! RabbitMQ's own files: `leases.rs` (the lease table and its reaper), `channel.rs` (a
//! channel holding leases, and its acks), `stream.rs` (the push consumer), `wait.rs`
//! (`wait_for_messages`).

mod admin;
#[cfg(test)]
mod broker_tests;
mod channel;
mod codec;
mod connection;
mod errors;
mod extensions;
mod leases;
mod limits;
mod receipts;
mod receive;
mod send;
mod settings;
mod stream;
mod version;
mod wait;

use std::collections::HashMap;
use std::sync::atomic::AtomicU16;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use self::connection::Connector;
use self::leases::Leases;
use self::receipts::warn_if_past_consumer_timeout;
pub use self::settings::{RabbitMqSettings, RabbitMqTls};
use crate::config::{MessagingConfig, RabbitMqQueueType};
use crate::error::Result;
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::resources::ResourceRequirements;
use crate::service::{
    AmqpExtensions, Capabilities, ConsumerOptions, DeleteOutcome, MessageStream, MessagingHealth,
    MessagingService, ProviderKind, QueueOptions, QueueStats,
};

/// Largest batch one `receive` or redrive step takes.
const MAX_BATCH: usize = 1000;

/// Shared by the service and its push streams.
pub(crate) struct Inner {
    settings: RabbitMqSettings,
    connector: Connector,
    leases: Arc<Leases>,
    prefetch: AtomicU16,
    /// Delay queues declared, when, and on which connection (re-declared before their
    /// `x-expires` could pass, and on a new connection, since the broker may have lost them).
    delay_queues: Mutex<HashMap<String, (std::time::Instant, u64)>>,
    /// `max_receive_count` of queues this service created or read back (see `limits.rs`).
    max_receive: Mutex<HashMap<QueueName, u32>>,
    /// Messages `wait_for_messages` took and keeps for the next receive.
    waiters: wait::Waiters,
    reaper: Mutex<Option<JoinHandle<()>>>,
    /// Dropped push streams giving back what they prefetched; `shutdown` waits for them, so
    /// closing the connection does not requeue (and count) messages nobody saw.
    give_backs: Mutex<Vec<JoinHandle<()>>>,
    me: std::sync::Weak<Inner>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Not aborted: the reaper still ends the leases already handed out, on time.
        self.leases.orphan();
    }
}

/// The RabbitMQ `MessagingService` (with [`AmqpExtensions`]).
pub struct RabbitMqMessageService {
    inner: Arc<Inner>,
    capabilities: Capabilities,
}

impl std::fmt::Debug for RabbitMqMessageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqMessageService")
            .field("url", &self.inner.settings.url)
            .field("queue_type", &self.inner.settings.queue_type)
            .finish()
    }
}

impl RabbitMqMessageService {
    /// Builds the service without connecting (`initialize` connects).
    pub fn new(settings: RabbitMqSettings) -> Result<Self> {
        let uri = settings.uri()?;
        let tls = settings.tls.load()?;
        let connector = Connector::new(
            uri,
            tls,
            settings.url.clone(),
            settings.connection_timeout,
            settings.publisher_channels,
            settings.connection_name.clone(),
        );
        let capabilities = Capabilities {
            delayed_send: true,
            lease_extension: true,
            dead_letter_queues: true,
            native_dead_letter: settings.queue_type == RabbitMqQueueType::Quorum,
            fifo_order: true,
            exchange_routing: true,
            push_consumer: true,
            transactional_send: false,
            receipt_fencing: true,
            detailed_stats: false,
            wakeup_notifications: true,
            // AMQP requeues what a closed connection held unacked.
            durable_leases: false,
            pgmq_extensions: false,
            max_payload_bytes: settings.max_payload_bytes,
            max_batch_size: MAX_BATCH,
            timer_resolution: Duration::from_millis(50),
        };
        Ok(RabbitMqMessageService {
            inner: Arc::new_cyclic(|me| Inner {
                prefetch: AtomicU16::new(settings.prefetch_count),
                settings,
                connector,
                leases: Arc::new(Leases::new()),
                delay_queues: Mutex::new(HashMap::new()),
                max_receive: Mutex::new(HashMap::new()),
                waiters: wait::Waiters::default(),
                reaper: Mutex::new(None),
                give_backs: Mutex::new(Vec::new()),
                me: me.clone(),
            }),
            capabilities,
        })
    }

    pub fn from_config(config: &MessagingConfig) -> Result<Self> {
        Self::new(RabbitMqSettings::from_config(config)?)
    }
}

#[async_trait]
impl MessagingService for RabbitMqMessageService {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Rabbitmq
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn resource_requirements(&self) -> ResourceRequirements {
        let s = &self.inner.settings;
        // Worst case held in memory: one full prefetch window of largest payloads.
        let prefetch = u64::from(s.prefetch_count) * s.max_payload_bytes as u64;
        ResourceRequirements {
            db_connections: 0,
            memory_mb: prefetch.div_ceil(1 << 20).max(1),
        }
    }

    async fn initialize(&self) -> Result<()> {
        self.inner.link().await.map(|_| ())
    }

    async fn health_check(&self) -> Result<MessagingHealth> {
        self.health().await
    }

    async fn shutdown(&self) -> Result<()> {
        self.stop().await
    }

    async fn create_queue_with(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        let max = options
            .max_receive_count
            .unwrap_or(self.inner.settings.default_max_receive_count);
        if self.inner.create_queue(queue, max).await? {
            self.inner.max_receive.lock().insert(queue.clone(), max);
        }
        Ok(())
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        for m in &messages {
            self.inner.check_payload(m.payload.len())?;
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let ids = messages.iter().map(|m| m.message_id).collect();
        self.inner.send_many(queue, messages).await?;
        Ok(ids)
    }

    async fn receive(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        if max_messages == 0 {
            return Ok(Vec::new());
        }
        warn_if_past_consumer_timeout(visibility_timeout);
        self.inner
            .receive_many(queue, max_messages.min(MAX_BATCH), visibility_timeout)
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
        self.inner.dead_letter_queue(queue)
    }

    async fn redrive_dead_letters(&self, queue: &QueueName, max_messages: usize) -> Result<u64> {
        self.inner.redrive(queue, max_messages).await
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
        self.inner.wait_for_messages(queue, max_wait).await
    }

    fn native_consumer_stream(
        &self,
        queue: &QueueName,
        options: &ConsumerOptions,
    ) -> Option<MessageStream> {
        Some(stream::push_stream(
            self.inner.clone(),
            queue.clone(),
            options.clone(),
        ))
    }

    fn amqp(&self) -> Option<&dyn AmqpExtensions> {
        Some(self)
    }
}
