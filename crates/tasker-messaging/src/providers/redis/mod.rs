//! The Redis provider: the whole contract in Lua scripts, on one server or a Redis Cluster.
//!
//! Built on the `redis` crate (redis-rs 1.x) rather than `fred`: the project's tokio runtime,
//! a `ConnectionManager` that reconnects by itself, the async cluster client, `Script` (EVALSHA
//! with a fallback to loading it), and RESP3 push subscriptions with automatic resubscription
//! are all in the one well-kept crate, and it is the raw client the bench compares with.
//!
//! # How Redis gives each part of the contract
//!
//! * **Atomic operations, one round trip each.** Every operation is one Lua script
//!   (`scripts.rs`): a batch send, a batch receive (which first moves due delayed messages and
//!   ended leases back to the ready set, then leases, and moves messages already received
//!   `max_receive_count` times to the dead-letter queue in the same script), a batch delete,
//!   visibility changes, dead-lettering, redrive, purge, stats.
//! * **Durable leases.** A lease is a member of the queue's `leased` sorted set scored by its
//!   end; it lives in Redis, not in a connection, so it outlives the receiver. Ended leases
//!   come back lazily inside the next receive (no background process is needed).
//! * **Receipt fencing.** Each delivery gets a token from a per-queue counter, stored on the
//!   message (`tok`); a receipt is (sequence, queue tag << 32 | token). A script acts on a
//!   receipt only when the message's current token matches, so a receipt whose message was
//!   received again is `InvalidReceipt`; until then it still works. The tag is the queue
//!   incarnation's random number, so a receipt used on another queue (or on the queue after
//!   `delete_queue` + `create_queue`) is refused without touching anything.
//! * **Clock.** Scripts read the server's `TIME` once each: every process sees one clock per
//!   queue (a queue lives on one node), whatever the clients' clocks say. Timers are in
//!   milliseconds.
//! * **Wakeups.** Scripts that make a message receivable `PUBLISH` on the queue's channel;
//!   `wait_for_messages` subscribes once per queue on one RESP3 connection per service
//!   (`wakeup.rs`) and also wakes itself when the next delay or lease ends.
//! * **Cluster.** Every key of a queue and of its dead-letter queue shares the hash tag
//!   `{<root>}` (the name without the dead-letter suffix), so the scripts touch one slot.
//!
//! # Layout (what `redis-cli` shows)
//!
//! For queue `orders` (dead-letter queue `orders_dlq`, same tag), base `tmq:{orders}:orders:`:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `<base>meta` | hash | `inc` (tag), `mrc` (max receive count), `dlq` (`1`/`0`), `seq`, `tok`, `created` |
//! | `<base>ready` | list | sequences receivable now: sends `RPUSH`ed (FIFO), ended leases and releases pushed to the head |
//! | `<base>leased` | zset | leased sequences, scored by lease end (ms) |
//! | `<base>delayed` | zset | delayed sequences, scored by due time (ms) |
//! | `<base>moved` | zset | sequences moved to the DLQ in the last 24 h (their receipts are refused) |
//! | `<base>m:<seq>` | hash | one message: `id`, `cid`, `at`, `rc`, `tok`, `body`, dead-letter fields (see `codec.rs`) |
//! | channel `<base>wake` | pub/sub | a publish when messages become receivable |
//!
//! # What Redis cannot give
//!
//! * No transactional send with a caller's database transaction, no exchanges, no push
//!   consumer (the consumer stream is receive in a loop, woken by the channel).
//! * Durability is the server's: without AOF a crash loses what was acknowledged since the
//!   last snapshot; `appendfsync always` keeps every acknowledged send (docs/semantics.md).
//!   `health_check` logs the mode; [`RedisMessageService::persistence`] returns it.
//! * One script runs at a time per server: a purge or delete of a huge queue blocks that
//!   server while it runs.
//!
//! # Files
//!
//! Laid out like every provider (see docs/providers.md); the trait impl below only
//! delegates:
//!
//! * `mod.rs`: the service, its per-queue key cache, capabilities, the `MessagingService` impl.
//! * `settings.rs`: [`RedisSettings`] and the URL's topology (one server or a cluster).
//! * `connection.rs`: connections (pooled managers or cluster connections), health, shutdown.
//! * `codec.rs`: the message hash to a [`ReceivedMessage`], receipts.
//! * `errors.rs`: redis-rs errors and script replies as [`crate::MessagingError`]s.
//! * `receipts.rs`: delete / visibility / dead-letter by receipt.
//! * `send.rs`: payload checks and the batch send.
//! * `receive.rs`: the batch receive, and `wait_for_messages`.
//! * `admin.rs`: create, delete, purge, stats, redrive.
//! * `extensions.rs`: none, by design.
//!
//! Redis's own files: `scripts.rs` (every Lua script), `keys.rs` (the key layout),
//! `wakeup.rs` (the subscriber that wakes waiters).

mod admin;
mod codec;
mod connection;
mod errors;
mod extensions;
mod keys;
mod receipts;
mod receive;
mod scripts;
mod send;
mod settings;
mod wakeup;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;

use self::connection::Link;
pub use self::connection::RedisPersistence;
use self::keys::QueueKeys;
pub use self::settings::RedisSettings;
use self::settings::Topology;
use crate::config::MessagingConfig;
use crate::error::{MessagingError, Result};
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::service::{
    Capabilities, DeleteOutcome, MessagingHealth, MessagingService, ProviderKind, QueueOptions,
    QueueStats,
};

/// Largest batch one script takes (Lua's `unpack` limit leaves room for this many).
const MAX_BATCH: usize = 1000;

/// A queue's keys and its dead-letter queue's, computed once per service.
struct QueueInfo {
    keys: QueueKeys,
    dlq: Option<(QueueName, QueueKeys)>,
}

/// The Redis `MessagingService`.
pub struct RedisMessageService {
    settings: RedisSettings,
    topology: Topology,
    capabilities: Capabilities,
    link: RwLock<Option<Arc<Link>>>,
    init_lock: tokio::sync::Mutex<()>,
    queues: RwLock<HashMap<QueueName, Arc<QueueInfo>>>,
    /// Queues this instance created: what `health_check` sums.
    created: RwLock<HashSet<QueueName>>,
}

impl std::fmt::Debug for RedisMessageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMessageService")
            .field("url", &self.settings.url)
            .field("cluster", &matches!(self.topology, Topology::Cluster(_)))
            .field("pool_size", &self.settings.pool_size)
            .finish()
    }
}

impl RedisMessageService {
    pub fn new(settings: RedisSettings) -> Result<Self> {
        let topology = settings.topology()?;
        let capabilities = Capabilities {
            delayed_send: true,
            lease_extension: true,
            dead_letter_queues: true,
            // Our scripts move them, in the receive that finds them over the limit.
            native_dead_letter: false,
            fifo_order: true,
            exchange_routing: false,
            push_consumer: false,
            transactional_send: false,
            receipt_fencing: true,
            detailed_stats: true,
            wakeup_notifications: true,
            durable_leases: true,
            pgmq_extensions: false,
            max_payload_bytes: settings.max_payload_bytes,
            max_batch_size: MAX_BATCH,
            timer_resolution: Duration::from_millis(1),
        };
        Ok(RedisMessageService {
            settings,
            topology,
            capabilities,
            link: RwLock::new(None),
            init_lock: tokio::sync::Mutex::new(()),
            queues: RwLock::new(HashMap::new()),
            created: RwLock::new(HashSet::new()),
        })
    }

    pub fn from_config(config: &MessagingConfig) -> Result<Self> {
        Self::new(RedisSettings::from_config(config)?)
    }

    /// The server's persistence mode (AOF, `appendfsync`, snapshots).
    pub async fn persistence(&self) -> Result<RedisPersistence> {
        self.read_persistence().await
    }

    /// A queue's keys (computed once, no I/O).
    #[inline]
    fn info(&self, queue: &QueueName) -> Arc<QueueInfo> {
        if let Some(info) = self.queues.read().get(queue) {
            return info.clone();
        }
        let suffix = &self.settings.dead_letter_suffix;
        let dlq = queue
            .dead_letter(suffix)
            .ok()
            .map(|d| (d.clone(), QueueKeys::new(&d, suffix)));
        let info = Arc::new(QueueInfo {
            keys: QueueKeys::new(queue, suffix),
            dlq,
        });
        self.queues
            .write()
            .entry(queue.clone())
            .or_insert(info)
            .clone()
    }

    /// A redis-rs error of an operation on `queue` as ours.
    pub(super) fn err(
        &self,
        e: redis::RedisError,
        operation: &'static str,
        queue: Option<&QueueName>,
    ) -> MessagingError {
        let info = queue.map(|q| self.info(q));
        let dlq = info.as_ref().and_then(|i| i.dlq.as_ref().map(|d| &d.0));
        errors::map_redis(e, operation, queue, dlq, &self.settings.url)
    }
}

#[async_trait]
impl MessagingService for RedisMessageService {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Redis
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
