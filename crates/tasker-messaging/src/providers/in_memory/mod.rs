//! The embedded in-memory provider: the full contract, no server.
//!
//! The CLI's default and the reference every other provider is compared with. Each queue has
//! its own lock (held for a few hundred nanoseconds per batch) and its own `Notify`, so
//! consumers wait for sends without polling. Timers use `tokio::time::Instant`, so tests can
//! drive leases and delays with paused time.
//!
//! # Files
//!
//! Laid out like every provider (see docs/providers.md); the trait impl below only
//! delegates:
//!
//! * `mod.rs`: the service struct, its queues, its capabilities, the `MessagingService` impl.
//! * `settings.rs`: [`InMemorySettings`] from `[queues]`.
//! * `connection.rs`: no connection; the lifecycle (open until shut down) and health.
//! * `codec.rs`: no encoding; a message as the queue stores it (payload shared, not copied).
//! * `errors.rs`: refused receipts as [`MessagingError`](crate::MessagingError)s.
//! * `receipts.rs`: delete / visibility / dead-letter by receipt, moving to a dead-letter queue.
//! * `send.rs`: payload checks and appending a batch under the queue's lock.
//! * `receive.rs`: leasing a batch, and `wait_for_messages` on the queue's `Notify`.
//! * `admin.rs`: looking up and creating queues, delete / purge / stats / redrive.
//! * `extensions.rs`: none, by design (what that means for the trait's accessors).
//!
//! In-memory's own file: `queue.rs` (one queue's messages, leases and timers).

mod admin;
mod codec;
mod connection;
mod errors;
mod extensions;
mod queue;
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
use tokio::sync::Notify;

use self::queue::{NewMessage, QueueState};
pub use self::settings::InMemorySettings;
use crate::error::Result;
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::service::{
    Capabilities, DeleteOutcome, MessagingHealth, MessagingService, ProviderKind, QueueOptions,
    QueueStats,
};

/// One queue: its state under a short-held lock, and the `Notify` that wakes its waiters.
struct MemQueue {
    name: QueueName,
    state: Mutex<QueueState>,
    notify: Notify,
    max_receive_count: u32,
    dead_letter_queue: Option<QueueName>,
    deleted: AtomicBool,
    /// The high bits of this queue's sequence numbers, so a receipt (sequence, generation)
    /// names its queue: one from another queue (or an earlier queue of the same name) is
    /// refused instead of touching a message that happens to share its sequence.
    seq_space: u64,
}

/// Sequence bits per queue; the bits above them number the queue.
const SEQ_BITS: u32 = 40;
static NEXT_SEQ_SPACE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl MemQueue {
    fn new(name: QueueName, max_receive_count: u32, dead_letter_queue: Option<QueueName>) -> Self {
        let seq_space = NEXT_SEQ_SPACE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % (1 << (64 - SEQ_BITS));
        MemQueue {
            name,
            state: Mutex::new(QueueState::starting_at(seq_space << SEQ_BITS)),
            notify: Notify::new(),
            max_receive_count,
            dead_letter_queue,
            deleted: AtomicBool::new(false),
            seq_space,
        }
    }
}

/// The in-memory `MessagingService`.
pub struct InMemoryMessageService {
    queues: RwLock<HashMap<QueueName, Arc<MemQueue>>>,
    settings: InMemorySettings,
    capabilities: Capabilities,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for InMemoryMessageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryMessageService")
            .field("queues", &self.queues.read().len())
            .field("settings", &self.settings)
            .finish()
    }
}

impl Default for InMemoryMessageService {
    fn default() -> Self {
        Self::new(InMemorySettings::default())
    }
}

impl InMemoryMessageService {
    pub fn new(settings: InMemorySettings) -> Self {
        let capabilities = Capabilities {
            delayed_send: true,
            lease_extension: true,
            dead_letter_queues: true,
            native_dead_letter: true,
            fifo_order: true,
            exchange_routing: false,
            push_consumer: false,
            transactional_send: false,
            receipt_fencing: true,
            detailed_stats: true,
            wakeup_notifications: true,
            // A lease lives in the service, not in a receiver's connection.
            durable_leases: true,
            pgmq_extensions: false,
            max_payload_bytes: settings.max_payload_bytes,
            max_batch_size: 10_000,
            timer_resolution: Duration::from_millis(1),
        };
        InMemoryMessageService {
            queues: RwLock::new(HashMap::new()),
            settings,
            capabilities,
            shut_down: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl MessagingService for InMemoryMessageService {
    fn provider(&self) -> ProviderKind {
        ProviderKind::InMemory
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn initialize(&self) -> Result<()> {
        self.check_open()
    }

    async fn health_check(&self) -> Result<MessagingHealth> {
        self.health().await
    }

    async fn shutdown(&self) -> Result<()> {
        self.stop().await
    }

    async fn create_queue_with(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        self.create_with(queue, options)
    }

    async fn send(&self, queue: &QueueName, message: OutgoingMessage) -> Result<MessageId> {
        self.check_payload(message.payload.len())?;
        let q = self.queue(queue)?;
        let id = message.message_id;
        self.insert(
            &q,
            [NewMessage {
                payload: message.payload,
                message_id: message.message_id,
                correlation_id: message.correlation_id,
                delay: message.delay,
                dead_letter: None,
                enqueued_at: None,
            }],
        )?;
        Ok(id)
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        self.send_many(queue, messages)
    }

    async fn receive(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        self.receive_many(queue, max_messages, visibility_timeout)
    }

    async fn delete_message(&self, queue: &QueueName, receipt: &ReceiptHandle) -> Result<()> {
        let parts = Self::receipt_parts(queue, receipt)?;
        let q = self.queue(queue)?;
        let (seq, generation) = Self::check_owner(&q, parts)?;
        let result = q.state.lock().delete(seq, generation);
        result.map_err(|e| Self::receipt_error(queue, e))
    }

    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        self.delete_leased(queue, receipts)
    }

    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        self.set_visibility(queue, receipt, visibility_timeout)
    }

    async fn dead_letter_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        self.dead_letter_leased(queue, receipt, reason)
    }

    fn dead_letter_queue_name(&self, queue: &QueueName) -> Result<QueueName> {
        queue.dead_letter(&self.settings.dead_letter_suffix)
    }

    async fn redrive_dead_letters(&self, queue: &QueueName, max_messages: usize) -> Result<u64> {
        self.redrive(queue, max_messages)
    }

    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats> {
        self.stats(queue)
    }

    async fn purge_queue(&self, queue: &QueueName) -> Result<u64> {
        self.purge(queue)
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.remove_queue(queue)
    }

    async fn wait_for_messages(&self, queue: &QueueName, max_wait: Duration) {
        self.wait(queue, max_wait).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typed::MessagingServiceExt;
    use tokio::time::Instant;

    fn q(name: &str) -> QueueName {
        QueueName::new(name).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_and_delay_follow_paused_time() {
        let svc = InMemoryMessageService::default();
        let queue = q("paused");
        svc.create_queue(&queue).await.unwrap();
        svc.send(&queue, OutgoingMessage::new("a")).await.unwrap();
        svc.send(
            &queue,
            OutgoingMessage::new("b").with_delay(Duration::from_secs(10)),
        )
        .await
        .unwrap();

        let got = svc
            .receive(&queue, 10, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(svc
            .receive(&queue, 10, Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        let again = svc
            .receive(&queue, 10, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].metadata.receive_count, 2);
        tokio::time::advance(Duration::from_secs(5)).await;
        let delayed = svc
            .receive(&queue, 10, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(&delayed[0].payload[..], b"b");
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_messages_wakes_on_send_not_by_polling() {
        let svc = Arc::new(InMemoryMessageService::default());
        let queue = q("wakeup");
        svc.create_queue(&queue).await.unwrap();
        let waiter = {
            let (svc, queue) = (svc.clone(), queue.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                svc.wait_for_messages(&queue, Duration::from_secs(3600))
                    .await;
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(7)).await;
        svc.send_message(&queue, &serde_json::json!({"x": 1}))
            .await
            .unwrap();
        let waited = waiter.await.unwrap();
        assert!(
            waited >= Duration::from_secs(7) && waited < Duration::from_secs(8),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn timer_heap_stays_bounded_under_churn() {
        let svc = InMemoryMessageService::default();
        let queue = q("churn");
        svc.create_queue(&queue).await.unwrap();
        for _ in 0..200 {
            let batch = (0..100)
                .map(|i| OutgoingMessage::new(vec![i as u8]))
                .collect();
            svc.send_batch(&queue, batch).await.unwrap();
            let got = svc
                .receive(&queue, 100, Duration::from_secs(30))
                .await
                .unwrap();
            let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
            let outcome = svc.delete_messages(&queue, &receipts).await.unwrap();
            assert_eq!(outcome.deleted, 100);
        }
        let q = svc.queue(&queue).unwrap();
        let mut state = q.state.lock();
        // 20,000 leases were taken; deleted ones must not pile up in the timer heap.
        assert!(
            state.timer_entries() <= 1024 + 100,
            "{}",
            state.timer_entries()
        );
        let stats = state.counts(Instant::now());
        assert_eq!((stats.visible, stats.in_flight, stats.delayed), (0, 0, 0));
    }
}
