//! The embedded in-memory provider: the full contract, no server.
//!
//! The CLI's default and the reference every other provider is compared with. Each queue has
//! its own lock (held for a few hundred nanoseconds per batch) and its own `Notify`, so
//! consumers wait for sends without polling. Timers use `tokio::time::Instant`, so tests can
//! drive leases and delays with paused time.

mod queue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio::time::Instant;

use self::queue::{NewMessage, QueueState, ReceiptError, StoredMessage};
use crate::config::MessagingConfig;
use crate::error::{MessagingError, Result};
use crate::message::{
    DeadLetterInfo, DeadLetterReason, MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage,
};
use crate::queue_name::QueueName;
use crate::service::{
    Capabilities, MessagingHealth, MessagingService, ProviderKind, QueueOptions, QueueStats,
};

/// Settings of the in-memory provider, from `[queues]`.
#[derive(Clone, Debug)]
pub struct InMemorySettings {
    pub default_max_receive_count: u32,
    pub dead_letter_suffix: String,
    pub max_payload_bytes: usize,
}

impl Default for InMemorySettings {
    fn default() -> Self {
        Self::from_config(&MessagingConfig::default())
    }
}

impl InMemorySettings {
    pub fn from_config(config: &MessagingConfig) -> Self {
        InMemorySettings {
            default_max_receive_count: config.queues.max_receive_count,
            dead_letter_suffix: config.queues.dead_letter_queue_suffix.clone(),
            max_payload_bytes: config.queues.max_payload_bytes,
        }
    }
}

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
        let seq_space = NEXT_SEQ_SPACE.fetch_add(1, Ordering::Relaxed) % (1 << (64 - SEQ_BITS));
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

    fn check_open(&self) -> Result<()> {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(MessagingError::NotInitialized(
                "in-memory service was shut down".into(),
            ));
        }
        Ok(())
    }

    fn queue(&self, name: &QueueName) -> Result<Arc<MemQueue>> {
        self.check_open()?;
        self.queues
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| MessagingError::queue_not_found(name.as_str()))
    }

    fn check_payload(&self, size: usize) -> Result<()> {
        if size > self.settings.max_payload_bytes {
            return Err(MessagingError::PayloadTooLarge {
                size,
                max: self.settings.max_payload_bytes,
            });
        }
        Ok(())
    }

    fn get_or_create(&self, name: &QueueName, max_receive_count: u32) -> Result<Arc<MemQueue>> {
        if let Some(q) = self.queues.read().get(name) {
            return Ok(q.clone());
        }
        let dead_letter_queue = if max_receive_count > 0 {
            Some(name.dead_letter(&self.settings.dead_letter_suffix)?)
        } else {
            None
        };
        let mut queues = self.queues.write();
        Ok(queues
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(MemQueue::new(
                    name.clone(),
                    max_receive_count,
                    dead_letter_queue,
                ))
            })
            .clone())
    }

    fn insert(
        &self,
        queue: &MemQueue,
        messages: impl IntoIterator<Item = NewMessage>,
    ) -> Result<()> {
        let now = Instant::now();
        let now_utc = Utc::now();
        {
            let mut state = queue.state.lock();
            // Checked under the lock: delete_queue marks the queue before draining it.
            if queue.deleted.load(Ordering::Acquire) {
                return Err(MessagingError::queue_not_found(queue.name.as_str()));
            }
            for message in messages {
                state.insert(message, now, now_utc);
            }
        }
        queue.notify.notify_waiters();
        Ok(())
    }

    /// Moves messages removed from `source` into its dead-letter queue (created if it was
    /// deleted meanwhile, so nothing is lost).
    fn move_to_dead_letter(
        &self,
        source: &MemQueue,
        messages: Vec<StoredMessage>,
        reason: impl Fn(&StoredMessage) -> DeadLetterReason,
    ) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let dlq_name = match &source.dead_letter_queue {
            Some(name) => name.clone(),
            None => source.name.dead_letter(&self.settings.dead_letter_suffix)?,
        };
        let dlq = self.get_or_create(&dlq_name, 0)?;
        let now_utc = Utc::now();
        let moved = messages.into_iter().map(|m| {
            let info = DeadLetterInfo {
                source_queue: source.name.clone(),
                reason: reason(&m),
                receive_count: m.receive_count,
                dead_lettered_at: now_utc,
                original_enqueued_at: m.enqueued_at,
            };
            NewMessage {
                payload: m.payload,
                message_id: m.message_id,
                correlation_id: m.correlation_id,
                delay: Duration::ZERO,
                dead_letter: Some(Box::new(info)),
                enqueued_at: Some(m.enqueued_at),
            }
        });
        self.insert(&dlq, moved)
    }

    fn receipt_parts(queue: &QueueName, receipt: &ReceiptHandle) -> Result<(u64, u64)> {
        receipt.as_pair().ok_or_else(|| {
            MessagingError::invalid_receipt(queue.as_str(), "not an in-memory receipt")
        })
    }

    /// Refuses a receipt whose sequence number belongs to another queue.
    fn check_owner(queue: &MemQueue, (seq, generation): (u64, u64)) -> Result<(u64, u64)> {
        if seq >> SEQ_BITS != queue.seq_space {
            return Err(MessagingError::invalid_receipt(
                queue.name.as_str(),
                "a receipt of another queue",
            ));
        }
        Ok((seq, generation))
    }

    fn receipt_error(queue: &QueueName, error: ReceiptError) -> MessagingError {
        match error {
            ReceiptError::Stale => MessagingError::invalid_receipt(
                queue.as_str(),
                "the lease ended and the message was received again",
            ),
            ReceiptError::Gone => {
                MessagingError::invalid_receipt(queue.as_str(), "the message no longer exists")
            }
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
        if self.shut_down.load(Ordering::Relaxed) {
            return Ok(MessagingHealth::Unhealthy {
                error: "shut down".into(),
            });
        }
        let now = Instant::now();
        let queues: Vec<_> = self.queues.read().values().cloned().collect();
        let (mut depth, mut in_flight) = (0, 0);
        for q in queues {
            let counts = q.state.lock().counts(now);
            depth += counts.visible + counts.delayed;
            in_flight += counts.in_flight;
        }
        Ok(MessagingHealth::Healthy {
            queue_depth: depth,
            in_flight,
        })
    }

    async fn shutdown(&self) -> Result<()> {
        self.shut_down.store(true, Ordering::Relaxed);
        for q in self.queues.read().values() {
            q.notify.notify_waiters();
        }
        Ok(())
    }

    async fn create_queue_with(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        self.check_open()?;
        let max = options
            .max_receive_count
            .unwrap_or(self.settings.default_max_receive_count);
        let q = self.get_or_create(queue, max)?;
        if let Some(dlq) = &q.dead_letter_queue {
            self.get_or_create(dlq, 0)?;
        }
        Ok(())
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
        for m in &messages {
            self.check_payload(m.payload.len())?;
        }
        let q = self.queue(queue)?;
        let ids = messages.iter().map(|m| m.message_id).collect();
        self.insert(
            &q,
            messages.into_iter().map(|m| NewMessage {
                payload: m.payload,
                message_id: m.message_id,
                correlation_id: m.correlation_id,
                delay: m.delay,
                dead_letter: None,
                enqueued_at: None,
            }),
        )?;
        Ok(ids)
    }

    async fn receive(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let q = self.queue(queue)?;
        let max = max_messages.min(self.capabilities.max_batch_size);
        let mut out = Vec::new();
        let mut dead = Vec::new();
        {
            let mut state = q.state.lock();
            out.reserve(max.min(state.visible() as usize));
            state.receive(
                max,
                visibility_timeout,
                q.max_receive_count,
                (Instant::now(), Utc::now()),
                &mut out,
                &mut dead,
            );
        }
        let max_receive_count = q.max_receive_count;
        self.move_to_dead_letter(&q, dead, |_| DeadLetterReason::MaxReceiveCountExceeded {
            max_receive_count,
        })?;
        Ok(out)
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
    ) -> Result<crate::service::DeleteOutcome> {
        let q = self.queue(queue)?;
        let mut outcome = crate::service::DeleteOutcome::default();
        let mut state = q.state.lock();
        for receipt in receipts {
            let result = Self::receipt_parts(queue, receipt)
                .and_then(|parts| Self::check_owner(&q, parts))
                .and_then(|(seq, generation)| {
                    state
                        .delete(seq, generation)
                        .map_err(|e| Self::receipt_error(queue, e))
                });
            match result {
                Ok(()) => outcome.deleted += 1,
                Err(e) => outcome.rejected.push((receipt.clone(), e)),
            }
        }
        Ok(outcome)
    }

    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        let parts = Self::receipt_parts(queue, receipt)?;
        let q = self.queue(queue)?;
        let (seq, generation) = Self::check_owner(&q, parts)?;
        let result =
            q.state
                .lock()
                .change_visibility(seq, generation, visibility_timeout, Instant::now());
        result.map_err(|e| Self::receipt_error(queue, e))?;
        if visibility_timeout.is_zero() {
            q.notify.notify_waiters();
        }
        Ok(())
    }

    async fn dead_letter_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let parts = Self::receipt_parts(queue, receipt)?;
        let q = self.queue(queue)?;
        let (seq, generation) = Self::check_owner(&q, parts)?;
        let taken = q.state.lock().take_leased(seq, generation);
        let message = taken.map_err(|e| Self::receipt_error(queue, e))?;
        let reason = reason.to_owned();
        self.move_to_dead_letter(&q, vec![message], move |_| DeadLetterReason::Rejected {
            reason: reason.clone(),
        })
    }

    fn dead_letter_queue_name(&self, queue: &QueueName) -> Result<QueueName> {
        queue.dead_letter(&self.settings.dead_letter_suffix)
    }

    async fn redrive_dead_letters(&self, queue: &QueueName, max_messages: usize) -> Result<u64> {
        let target = self.queue(queue)?;
        let dlq_name = match &target.dead_letter_queue {
            Some(name) => name.clone(),
            None => queue.dead_letter(&self.settings.dead_letter_suffix)?,
        };
        let Ok(dlq) = self.queue(&dlq_name) else {
            return Ok(0);
        };
        let taken = dlq.state.lock().take_ready(max_messages, Instant::now());
        let n = taken.len() as u64;
        let back: Vec<NewMessage> = taken
            .iter()
            .map(|m| NewMessage {
                payload: m.payload.clone(),
                message_id: m.message_id,
                correlation_id: m.correlation_id,
                delay: Duration::ZERO,
                dead_letter: None,
                enqueued_at: m.dead_letter.as_ref().map(|d| d.original_enqueued_at),
            })
            .collect();
        if let Err(e) = self.insert(&target, back) {
            // The target vanished meanwhile: put the dead letters back where they were.
            let restore = taken.into_iter().map(|m| NewMessage {
                payload: m.payload,
                message_id: m.message_id,
                correlation_id: m.correlation_id,
                delay: Duration::ZERO,
                dead_letter: m.dead_letter,
                enqueued_at: Some(m.enqueued_at),
            });
            self.insert(&dlq, restore)?;
            return Err(e);
        }
        Ok(n)
    }

    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let q = self.queue(queue)?;
        let now = Instant::now();
        let counts = q.state.lock().counts(now);
        let dead_letter_count = match &q.dead_letter_queue {
            Some(dlq) => match self.queues.read().get(dlq).cloned() {
                Some(d) => {
                    let c = d.state.lock().counts(now);
                    Some(c.visible + c.in_flight + c.delayed)
                }
                None => Some(0),
            },
            None => None,
        };
        Ok(QueueStats {
            queue_name: queue.clone(),
            message_count: counts.visible,
            in_flight_count: Some(counts.in_flight),
            delayed_count: Some(counts.delayed),
            oldest_message_age_seconds: counts
                .oldest
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            dead_letter_count,
        })
    }

    async fn purge_queue(&self, queue: &QueueName) -> Result<u64> {
        let q = self.queue(queue)?;
        let n = q.state.lock().purge();
        Ok(n)
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        self.check_open()?;
        let removed = {
            let mut queues = self.queues.write();
            let q = queues
                .remove(queue)
                .ok_or_else(|| MessagingError::queue_not_found(queue.as_str()))?;
            let dlq = q.dead_letter_queue.as_ref().and_then(|d| queues.remove(d));
            [Some(q), dlq]
        };
        for q in removed.into_iter().flatten() {
            let _guard = q.state.lock();
            q.deleted.store(true, Ordering::Release);
            drop(_guard);
            q.notify.notify_waiters();
        }
        Ok(())
    }

    async fn wait_for_messages(&self, queue: &QueueName, max_wait: Duration) {
        let Ok(q) = self.queue(queue) else {
            // The next receive reports the error; do not spin meanwhile.
            tokio::time::sleep(max_wait).await;
            return;
        };
        let notified = q.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now = Instant::now();
        let deadline = {
            let mut state = q.state.lock();
            state.release_due(now);
            if state.visible() > 0 || q.deleted.load(Ordering::Acquire) {
                return;
            }
            match state.next_timer() {
                Some(t) => t.min(now + max_wait),
                None => now + max_wait,
            }
        };
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typed::MessagingServiceExt;

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
