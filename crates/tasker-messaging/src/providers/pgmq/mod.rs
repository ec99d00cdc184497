//! PGMQ on PostgreSQL: the default production provider.
//!
//! Works on any PostgreSQL where pgmq is present, as the extension (managed services ship it)
//! or as pgmq's SQL API installed by the `pgmq` crate's embedded installer
//! (`install_sql = true`, or [`PgmqMessageService::install_sql`]); the extension is detected
//! and never installed over. pgmq >= 1.10 is required (message headers, `last_read_at`).
//!
//! # What a message looks like in PostgreSQL
//!
//! Every message is an ordinary pgmq row (`pgmq.q_<queue>`), so plain `pgmq.read(...)` reads
//! what we send and we receive what plain `pgmq.send(...)` sends. pgmq's `message` column is
//! `jsonb`, which re-formats JSON text (spacing, key order, duplicate keys), while our contract
//! keeps payload bytes exactly. So:
//!
//! * a payload that is JSON is stored as that JSON in `message` (other clients see the
//!   document itself). When it is serde's compact rendering of itself (what the typed layer
//!   sends), our column `tasker_key_order` keeps the order of its object keys, which jsonb
//!   forgets, and on receive the exact bytes are rebuilt from jsonb's text (`key_order.rs`): the
//!   payload is stored once. Other JSON (odd spacing, duplicate keys, number forms serde would
//!   print differently) keeps its exact text in the header `tasker_payload` when jsonb's text
//!   differs from it; PostgreSQL makes that comparison in the INSERT itself.
//! * a payload that is UTF-8 text but not JSON is stored as a JSON string
//!   (`tasker_payload_encoding: "text"`), and binary payloads as a base64 JSON string
//!   (`"base64"`): still valid jsonb, still readable by any client.
//! * the message id and correlation id are binary columns of ours on the queue table
//!   (`tasker_message_id`, `tasker_correlation_id`, uuid), added to a queue when this
//!   provider first uses it; pgmq's functions name their columns and never see them, and
//!   plain SQL can select them. Our archive keeps them. Dead letters carry
//!   `tasker_dead_letter` (source queue, reason, receive count, times) in headers. Headers
//!   another client set are kept through dead-lettering and redrive.
//! * a message without our id (sent by plain SQL) is received with its jsonb text as
//!   payload and a stable id derived from where it was first seen
//!   ([`MessageId::derived`]`(queue, msg_id)`), recorded as `tasker_origin` when it moves, so
//!   the id survives dead-lettering and redrive. Rows written before the id columns existed
//!   (ids as headers) are still read.
//!
//! # Leases and receipts
//!
//! A receipt is `(msg_id, read_ct)` plus a tag of the queue's name and incarnation (its
//! table's OID: msg ids restart when a queue is created again). pgmq increments `read_ct`
//! on every read, so a receipt from a lease that ended and was handed to another receiver no
//! longer matches: delete, visibility changes and dead-lettering check it in the same SQL
//! statement (receipt fencing). Timers use PostgreSQL's clock with millisecond precision (our
//! statements set `vt` directly; pgmq's own `read` takes whole seconds, and
//! [`PgmqExtensions::read_batch`] rounds up to them).
//!
//! # Dead letters
//!
//! `max_receive_count` per queue lives in `tasker_messaging.queues`. A receive that meets a
//! message already received that many times does not lease it, counts it, and before
//! returning moves such messages to `<queue><suffix>` with one statement (delete + insert in
//! one transaction: never lost, never duplicated). The move is its own statement so that
//! the common receive, which meets none, costs what pgmq's own `read` costs. When it met some,
//! a second lease that skips them fills their places (so they never empty a receive, even
//! while their move fails; a failed move is logged with their count). The dead letter
//! records its source msg id, so a delete by the receipt it was moved under is refused.
//!
//! # Wakeups
//!
//! One `LISTEN` connection per service wakes `wait_for_messages` for every queue (see
//! `listener.rs`). Our statements notify only when a queue may go from nothing receivable to
//! something (NOTIFY serializes committing senders, so it is kept off the busy path), and a
//! trigger notifies for other clients' plain `pgmq.send` (see `sql.rs`).
//!
//! # Why the key order and id columns
//!
//! Under concurrent batch sends PostgreSQL's WAL is the limit, so row size is throughput. A
//! `StepMessage` row is 228 bytes in plain pgmq; with an exact copy of the payload beside the
//! document it was 543; with the key order and the ids as jsonb headers 395; with the ids
//! and key order in binary columns 278 (see docs/benchmarks.md, "PGMQ provider").
//!
//! # Files
//!
//! Laid out like every provider (see docs/providers.md); the trait impl below only
//! delegates:
//!
//! * `mod.rs`: the service struct, its capabilities, the `MessagingService` impl.
//! * `settings.rs`: [`PgmqSettings`] from `[connection.pgmq]` and `[queues]`.
//! * `connection.rs`: the pool, the listener task, initialize / health / shutdown.
//! * `codec.rs`: a payload and its ids to a row's columns and back (`decode_row`).
//! * `errors.rs`: sqlx errors and fencing failures as [`MessagingError`]s.
//! * `receipts.rs`: what a receipt holds, and delete / visibility / dead-letter by receipt.
//! * `send.rs`: batch send, also inside the caller's transaction.
//! * `receive.rs`: receive (with dead-lettering over the limit) and `wait_for_messages`.
//! * `admin.rs`: queue metadata, create / delete / purge / stats / redrive.
//! * `extensions.rs`: [`PgmqExtensions`].
//!
//! PGMQ's own files: `sql.rs` (every statement, per queue), `listener.rs` (the `LISTEN`
//! connection), `install.rs` (detecting pgmq, installing its SQL, our schema),
//! `key_order.rs` and `key_order_flat.rs` (compact JSON stored once).

mod admin;
mod codec;
mod connection;
mod errors;
mod extensions;
mod install;
mod key_order;
mod key_order_flat;
mod listener;
mod receipts;
mod receive;
mod send;
mod settings;
mod sql;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use sqlx::postgres::PgConnectOptions;

use self::connection::Running;
// Named here for install.rs (`super::map_sqlx`).
use self::errors::map_sqlx;
pub use self::install::{InstallOutcome, PgmqInstallation};
use self::listener::Wakeups;
pub use self::settings::PgmqSettings;
use self::sql::QueueSql;
use crate::error::{MessagingError, Result};
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::resources::ResourceRequirements;
use crate::secret::scrub;
use crate::service::{
    Capabilities, DeleteOutcome, MessagingHealth, MessagingService, PgmqExtensions, ProviderKind,
    QueueOptions, QueueStats,
};

/// Largest batch for one send or receive: one statement with arrays of this length.
const MAX_BATCH: usize = 10_000;
/// Longest lease or delay accepted: a century, far inside PostgreSQL's interval range.
const MAX_TIMER_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

/// What we know about one queue: its dead-letter queue, limit and statements.
struct QueueMeta {
    dead_letter_queue: Option<QueueName>,
    max_receive_count: u32,
    /// Part of every receipt, so a receipt of another queue (or of an earlier queue of the
    /// same name) is refused, not misapplied.
    tag: u32,
    sql: QueueSql,
}

/// The PGMQ `MessagingService`.
pub struct PgmqMessageService {
    settings: PgmqSettings,
    capabilities: Capabilities,
    options: PgConnectOptions,
    listener_name: String,
    running: std::sync::OnceLock<Running>,
    init_lock: tokio::sync::Mutex<()>,
    queues: RwLock<HashMap<QueueName, Arc<QueueMeta>>>,
    wakeups: Arc<Wakeups>,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for PgmqMessageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgmqMessageService")
            .field("database_url", &self.settings.database_url)
            .field("pool_size", &self.settings.pool_size)
            .field("queues", &self.queues.read().len())
            .finish()
    }
}

impl PgmqMessageService {
    /// A service for `settings`; connects in [`MessagingService::initialize`].
    pub fn new(settings: PgmqSettings) -> Result<Self> {
        let options = PgConnectOptions::from_str(settings.database_url.expose())
            .map_err(|e| {
                MessagingError::config(
                    "connection.pgmq.database_url",
                    scrub(&e.to_string(), &settings.database_url),
                )
            })?
            // One prepared statement per queue and operation; keep them all.
            .statement_cache_capacity(1024)
            .application_name("tasker_messaging");
        let capabilities = Capabilities {
            delayed_send: true,
            lease_extension: true,
            dead_letter_queues: true,
            native_dead_letter: false,
            fifo_order: true,
            exchange_routing: false,
            push_consumer: false,
            transactional_send: true,
            receipt_fencing: true,
            detailed_stats: true,
            wakeup_notifications: true,
            durable_leases: true,
            pgmq_extensions: true,
            max_payload_bytes: settings.max_payload_bytes,
            max_batch_size: MAX_BATCH,
            timer_resolution: Duration::from_millis(1),
        };
        let listener_name = format!("tasker_messaging_listener_{:08x}", rand::random::<u32>());
        Ok(PgmqMessageService {
            settings,
            capabilities,
            options,
            listener_name,
            running: std::sync::OnceLock::new(),
            init_lock: tokio::sync::Mutex::new(()),
            queues: RwLock::new(HashMap::new()),
            wakeups: Arc::new(Wakeups::default()),
            shut_down: AtomicBool::new(false),
        })
    }

    /// Builds and initializes a service.
    pub async fn connect(settings: PgmqSettings) -> Result<Self> {
        let service = Self::new(settings)?;
        service.initialize().await?;
        Ok(service)
    }

    pub fn settings(&self) -> &PgmqSettings {
        &self.settings
    }
}

#[async_trait]
impl MessagingService for PgmqMessageService {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Pgmq
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn resource_requirements(&self) -> ResourceRequirements {
        ResourceRequirements {
            // The pool plus the listener's own connection.
            db_connections: self.settings.pool_size + 1,
            memory_mb: 0,
        }
    }

    async fn initialize(&self) -> Result<()> {
        self.start_once().await
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

    fn pgmq(&self) -> Option<&dyn PgmqExtensions> {
        Some(self)
    }
}
