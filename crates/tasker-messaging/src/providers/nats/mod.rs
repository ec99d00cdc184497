//! NATS JetStream (async-nats): one work-queue stream per queue, one durable pull consumer.
//!
//! # How JetStream gives the contract
//!
//! * **Queues.** A queue `<q>` is the stream `<q>` (retention `WorkQueue`, file storage,
//!   `replicas` copies) capturing the one subject `tasker.<q>`, and its durable pull consumer
//!   `tasker` (explicit acks). Its dead-letter queue `<q><suffix>` is a queue of the same kind.
//!   Queue names are valid stream names and subject tokens as they are, so the mapping is one
//!   to one; the consumer's description records the queue's `max_receive_count` and
//!   dead-letter queue, so every service reads the first creation's options.
//! * **Receive** is a pull request with `no_wait` for up to `max` messages (one round trip).
//!   **Leases** are the consumer's ack-pending entries: a message is not delivered again until
//!   its entry expires. The consumer's `AckWait` is the default visibility timeout; a receive
//!   with another timeout sends `-NAK {"delay": vt}` for each message, which moves the
//!   entry's expiry to now + vt (the message stays leased and its receipt still acks it), so
//!   any `vt` is honoured. `change_message_visibility(d)` is the same NAK (d = 0 releases at
//!   once). The server keeps the entries when the receiver disconnects (`durable_leases`).
//! * **Receive counts** are the server's delivery count from the ack subject.
//! * **Delete** is `+ACK`; a batch publishes its acks and waits for the server's reply to the
//!   last (acks on one connection are handled in order), one round trip per batch. On a
//!   stream with more than one replica the server answers an ack before the stream leader
//!   has removed the message, so the delete then confirms the removal (usually one more
//!   request; see `receipts.rs`), and stats read after it never count a deleted message.
//! * **Dead letters.** `MaxDeliver` is unlimited: a message at JetStream's `MaxDeliver` would
//!   stay in the work-queue stream, never delivered again, announced only by an advisory
//!   nobody may be listening to. Instead a receive that gets a delivery over the queue's
//!   `max_receive_count` copies it, intact, to the dead-letter stream (awaiting the publish
//!   acknowledgement), then acks it; a failed copy NAKs it back (retried by the next receive).
//!   A crash between copy and ack can leave a duplicate, never a gap.
//! * **Wakeups.** `wait_for_messages` subscribes to the queue's subject (every publish to the
//!   stream is also a core NATS message there) and asks the consumer whether anything is
//!   pending; no polling.
//!
//! # What JetStream 2.9 cannot give
//!
//! * **Receipt fencing.** The server accepts an ack from any earlier delivery of a message
//!   still pending (it checks the stream sequence, not the delivery count), so a stale
//!   receipt acks the newer delivery: `receipt_fencing` is declared absent.
//! * **Delayed send.** 2.9 has no per-message schedule; `delayed_send` is declared absent and
//!   a message with a delay is refused (`Unsupported`) before anything is sent.
//! * **Detailed stats.** The consumer counts a lease that ended but whose message was not yet
//!   delivered again as still pending an ack, so the in-flight count can be high by those
//!   messages until the next receive: `detailed_stats` is declared absent (the counts are
//!   reported; the visible count is the stream's messages minus the ack-pending ones).
//!
//! # Files
//!
//! Laid out like every provider (see docs/providers.md):
//!
//! * `mod.rs`: the service, its per-queue metadata cache, capabilities, the trait impl.
//! * `settings.rs`: [`NatsSettings`] from `connection.nats` and `[queues]`.
//! * `connection.rs`: the client, the lifecycle, JetStream API requests.
//! * `codec.rs`: headers (ids, dead-letter record), ack subjects, decoding a delivery.
//! * `errors.rs`: async-nats and JetStream errors as `MessagingError`s.
//! * `receipts.rs`: ack / NAK / dead-letter by receipt.
//! * `send.rs`: payload checks and pipelined publishes.
//! * `receive.rs`: the pull request, dead-lettering over the limit, `wait_for_messages`.
//! * `admin.rs`: streams and consumers: create, delete, purge, stats, redrive.
//! * `extensions.rs`: none, by design.

mod admin;
mod codec;
mod connection;
mod errors;
mod extensions;
mod receipts;
mod receive;
mod send;
mod settings;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;

pub use self::settings::NatsSettings;
use crate::error::Result;
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::service::{
    Capabilities, DeleteOutcome, MessagingHealth, MessagingService, ProviderKind, QueueOptions,
    QueueStats,
};

/// The durable pull consumer of every queue's stream.
const CONSUMER: &str = "tasker";
/// Largest receive; also what a pull request asks for at most.
const MAX_BATCH: usize = 1000;
/// NATS's default `max_payload` (1 MiB) less room for our headers.
const MAX_NATS_PAYLOAD: usize = 1024 * 1024 - 4096;

/// The client and its JetStream context.
struct Link {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
}

/// What a service knows about one queue, read once from its consumer.
struct QueueMeta {
    /// `tasker.<q>`.
    subject: async_nats::Subject,
    /// `$JS.API.CONSUMER.MSG.NEXT.<q>.tasker`.
    next: async_nats::Subject,
    max_receive_count: u32,
    dead_letter_queue: Option<QueueName>,
    /// The consumer's `AckWait`: the lease a delivery starts with.
    ack_wait: Duration,
    /// When the stream was created (ns since the epoch): a receipt for a message stored
    /// before it names an earlier queue of the same name, whose sequences restarted.
    created_ns: i128,
    /// The stream has more than one replica: an ack's answer comes before the stream leader
    /// has removed the message, so deletes confirm the removal (see `receipts.rs`).
    replicated: bool,
}

/// The subject a queue's stream captures.
#[inline]
fn subject_of(queue: &QueueName) -> String {
    format!("tasker.{queue}")
}

/// The NATS JetStream `MessagingService`.
pub struct NatsMessageService {
    settings: NatsSettings,
    capabilities: Capabilities,
    link: tokio::sync::OnceCell<Link>,
    queues: RwLock<HashMap<QueueName, Arc<QueueMeta>>>,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for NatsMessageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsMessageService")
            .field("url", &self.settings.url)
            .field("replicas", &self.settings.replicas)
            .field("connected", &self.link.get().is_some())
            .finish()
    }
}

impl NatsMessageService {
    pub fn new(settings: NatsSettings) -> Result<Self> {
        settings.check()?;
        let capabilities = Capabilities {
            delayed_send: false,
            lease_extension: true,
            dead_letter_queues: true,
            native_dead_letter: false,
            fifo_order: true,
            exchange_routing: false,
            push_consumer: false,
            transactional_send: false,
            receipt_fencing: false,
            detailed_stats: false,
            wakeup_notifications: true,
            // Ack-pending entries live in the server's consumer, not in a connection.
            durable_leases: true,
            pgmq_extensions: false,
            max_payload_bytes: settings.max_payload_bytes.min(MAX_NATS_PAYLOAD),
            max_batch_size: MAX_BATCH,
            timer_resolution: Duration::from_millis(10),
        };
        Ok(NatsMessageService {
            settings,
            capabilities,
            link: tokio::sync::OnceCell::new(),
            queues: RwLock::new(HashMap::new()),
            shut_down: AtomicBool::new(false),
        })
    }

    pub fn from_config(config: &crate::config::MessagingConfig) -> Result<Self> {
        Self::new(NatsSettings::from_config(config)?)
    }

    /// Connects and initializes a service for `url` with the default settings.
    pub async fn connect_to(url: impl Into<String>) -> Result<Self> {
        let svc = Self::new(NatsSettings::new(url))?;
        svc.connect().await?;
        Ok(svc)
    }
}

#[async_trait]
impl MessagingService for NatsMessageService {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Nats
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_debug_never_shows_the_password() {
        let svc = NatsMessageService::new(NatsSettings::new("nats://u:pa55-w0rd@127.0.0.1:4222"))
            .unwrap();
        let shown = format!("{svc:?}");
        assert!(!shown.contains("pa55-w0rd"), "{shown}");
    }
}
