//! Amazon SQS (through `aws-sdk-sqs`), standard or FIFO queues, tested against moto.
//!
//! Each part of the contract is mapped onto SQS's own feature, not emulated:
//!
//! * **Leases** are SQS's visibility timeout, given per receive; `change_message_visibility`
//!   is `ChangeMessageVisibility` (0 releases at once, `d > 0` extends). SQS counts receives
//!   itself (`ApproximateReceiveCount`) and keeps a lease when the receiver disconnects
//!   (`durable_leases`). Timers are whole seconds (`timer_resolution` 1 s, rounded up).
//! * **Dead letters** are SQS's redrive policy: every queue is created with its dead-letter
//!   queue `<queue><suffix>` and, when `max_receive_count > 0`, a `RedrivePolicy` whose
//!   `maxReceiveCount` makes SQS move the message itself, intact (`native_dead_letter`).
//!   `dead_letter_message` copies the message there with a `tasker-dead-letter` attribute and
//!   then deletes it; `redrive_dead_letters` moves dead letters back with their ids.
//! * **Ids** travel as message attributes (`tasker-message-id`, `tasker-correlation-id`), so
//!   any SQS client sees them; a message without one gets an id derived from SQS's.
//! * **Batches**: `send_batch` is `SendMessageBatch` in chunks of 10 (and at most 1 MiB), sent
//!   concurrently on standard queues and one after another on FIFO queues (order); a failed
//!   entry fails the call, naming every message that was not sent and how many were.
//!   `delete_messages` is `DeleteMessageBatch`, a refused entry reported per receipt.
//! * **FIFO** queues (`fifo` setting; SQS name `<queue>.fifo`): the deduplication id is the
//!   message id (a retried send is dropped by SQS within its 5-minute window), chunks are sent
//!   in order, and the message group is the correlation id (a message without one is its own
//!   group), so order holds per correlation id. One group per queue
//!   ([`SqsMessageGroups::PerQueue`]) gives strict order (`fifo_order`), but SQS then hands
//!   out one batch per queue at a time, which the contract's concurrent receivers do not
//!   allow (C7, C8). FIFO queues have no per-message delay.
//!
//! What SQS cannot give, and what the provider does instead:
//!
//! * **No receipt fencing.** SQS accepts a receipt handle of an earlier delivery (real SQS
//!   ignores a stale delete silently; moto applies it to the newer delivery), so
//!   `receipt_fencing` is declared absent. A receipt names its queue, so one used on another
//!   queue is refused before any call.
//! * **No reading by receipt.** `dead_letter_message` needs the message's payload, so only
//!   the service instance that received it can dead-letter it (it keeps the payloads of its
//!   leases, shared with the messages it handed out, until delete or lease end).
//! * **No wakeups without a receive.** A long poll leases what it finds and counts a receive,
//!   and a dropped long poll keeps running on the server, taking messages nobody sees, which
//!   the contract forbids; `wait_for_messages` therefore watches `ApproximateNumberOfMessages`
//!   with a backoff (50 ms to 500 ms) and `wakeup_notifications` is absent.
//! * **Approximate stats** (`detailed_stats` absent): counts are SQS's approximate attributes
//!   and there is no oldest-message age. `purge_queue` returns the count before the purge.
//! * **Delays** are at most 15 minutes (SQS's limit): a longer delay is refused before any
//!   call with a permanent error; FIFO queues refuse any delay (`delayed_send` absent there).
//!
//! # Files
//!
//! * `mod.rs`: the service, per-queue metadata (URL cache), capabilities, the trait impl.
//! * `settings.rs`: [`SqsSettings`] (endpoint, region, credentials, FIFO), limits.
//! * `connection.rs`: the SDK client (HTTPS by rustls on *ring*), `health`, `stop`.
//! * `codec.rs`: body and attributes to a [`ReceivedMessage`] and back.
//! * `errors.rs`: SDK errors as `MessagingError`s (scrubbed).
//! * `receipts.rs`: our receipt (`<sqs name> <handle>`), the lease table, delete / visibility /
//!   dead-letter by receipt.
//! * `send.rs`: `send_many`: checks, chunks, `SendMessageBatch`.
//! * `receive.rs`: `receive_many` and `wait`.
//! * `admin.rs`: queue URLs, create (with redrive policy), delete, purge, stats, redrive.
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
use parking_lot::{Mutex, RwLock};

pub use self::codec::{ATTR_CORRELATION_ID, ATTR_DEAD_LETTER, ATTR_ENCODING, ATTR_MESSAGE_ID};
use self::receipts::Leases;
pub use self::settings::{
    SqsCredentials, SqsMessageGroups, SqsSettings, SQS_MAX_MESSAGE_BYTES, SQS_MAX_PAYLOAD_BYTES,
};
use crate::config::MessagingConfig;
use crate::error::Result;
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::service::{
    Capabilities, DeleteOutcome, MessagingHealth, MessagingService, ProviderKind, QueueOptions,
    QueueStats,
};

/// What the service knows of one queue: its URL (cached), receive limit, and the leases it
/// handed out.
struct QueueMeta {
    name: QueueName,
    sqs_name: String,
    url: String,
    /// The redrive policy's `maxReceiveCount`; 0 without one.
    max_receive_count: u32,
    /// When this queue is a dead-letter queue: the queue whose dead letters it holds.
    dead_letter_of: Option<QueueName>,
    leases: Mutex<Leases>,
}

/// The SQS `MessagingService`.
pub struct SqsMessageService {
    settings: SqsSettings,
    capabilities: Capabilities,
    client: tokio::sync::OnceCell<aws_sdk_sqs::Client>,
    queues: RwLock<HashMap<QueueName, Arc<QueueMeta>>>,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for SqsMessageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsMessageService")
            .field("settings", &self.settings)
            .field("queues", &self.queues.read().len())
            .finish()
    }
}

impl SqsMessageService {
    pub fn new(settings: SqsSettings) -> Result<Self> {
        settings.check()?;
        let capabilities = Capabilities {
            // FIFO queues take no per-message delay.
            delayed_send: !settings.fifo,
            lease_extension: true,
            dead_letter_queues: true,
            native_dead_letter: true,
            fifo_order: settings.fifo && settings.message_groups == SqsMessageGroups::PerQueue,
            exchange_routing: false,
            push_consumer: false,
            transactional_send: false,
            // SQS accepts receipts of earlier deliveries (see the module docs).
            receipt_fencing: false,
            // Approximate counts, no oldest-message age.
            detailed_stats: false,
            wakeup_notifications: false,
            durable_leases: true,
            pgmq_extensions: false,
            max_payload_bytes: settings.max_payload_bytes,
            max_batch_size: 10,
            timer_resolution: Duration::from_secs(1),
        };
        Ok(SqsMessageService {
            settings,
            capabilities,
            client: tokio::sync::OnceCell::new(),
            queues: RwLock::new(HashMap::new()),
            shut_down: AtomicBool::new(false),
        })
    }

    pub fn from_config(config: &MessagingConfig) -> Result<Self> {
        Self::new(SqsSettings::from_config(config)?)
    }

    pub fn settings(&self) -> &SqsSettings {
        &self.settings
    }
}

#[async_trait]
impl MessagingService for SqsMessageService {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Sqs
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
