//! Shadow mode (the plan's zero-downtime path): write to the primary and a shadow, read from
//! the primary, report where the two diverge.
//!
//! Every write (create/delete/purge queue, send, send_batch, redrive) goes to the primary
//! first; only when it succeeded is it repeated on the shadow, bounded by `shadow_timeout`.
//! Every receive is answered by the primary; the shadow receives the same number of messages
//! so its queue drains alongside, and the two batches' message ids are compared. Acks, nacks
//! and dead-lettering made with a primary receipt are mirrored with the shadow's receipt for
//! the same message id. The shadow never fails the caller: its errors and timeouts are counted
//! and reported by [`ShadowLayer::report`], and [`ShadowService::compare_queue`] compares the
//! queues' depths.
//!
//! Cost: writes wait for the shadow too (at most `shadow_timeout`). The lease maps hold one
//! entry per unacknowledged message received through this wrapper, at most
//! `MAX_TRACKED_LEASES`; beyond that new leases are counted as untracked.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

use super::layer::{dispatch, Layer, LayerFuture, Next, Request, Response};
use super::layered::Layered;
use super::Op;
use crate::error::Result;
use crate::message::{MessageId, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::resources::ResourceRequirements;
use crate::service::{DeleteOutcome, MessagingService};

/// Most leases tracked for mirroring acknowledgements.
pub const MAX_TRACKED_LEASES: usize = 100_000;

#[derive(Default)]
struct Leases {
    /// Primary receipt -> message id.
    primary: HashMap<(QueueName, ReceiptHandle), MessageId>,
    /// Message id -> the shadow's receipt for it.
    shadow: HashMap<(QueueName, MessageId), ReceiptHandle>,
    only_primary: HashSet<(QueueName, MessageId)>,
    only_shadow: HashSet<(QueueName, MessageId)>,
}

#[derive(Default)]
struct Counters {
    writes_mirrored: AtomicU64,
    shadow_failures: AtomicU64,
    id_mismatches: AtomicU64,
    receives_compared: AtomicU64,
    acks_mirrored: AtomicU64,
    acks_without_shadow_copy: AtomicU64,
    untracked_leases: AtomicU64,
}

/// Where primary and shadow disagreed so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DivergenceReport {
    /// Writes repeated on the shadow successfully.
    pub writes_mirrored: u64,
    /// Shadow calls that failed or timed out (the caller saw the primary's result).
    pub shadow_failures: u64,
    /// Sends for which the shadow returned different message ids.
    pub id_mismatches: u64,
    /// Receives whose batches were compared.
    pub receives_compared: u64,
    /// Message ids the primary delivered that the shadow has not (yet) delivered.
    pub only_in_primary: u64,
    /// Message ids the shadow delivered that the primary has not (yet) delivered.
    pub only_in_shadow: u64,
    pub acks_mirrored: u64,
    /// Acks on the primary for which the shadow had no lease to mirror.
    pub acks_without_shadow_copy: u64,
    pub untracked_leases: u64,
    /// Up to 10 of the ids only the primary delivered.
    pub sample_only_in_primary: Vec<MessageId>,
    pub last_shadow_error: Option<String>,
}

impl DivergenceReport {
    /// No divergence observed.
    pub fn is_consistent(&self) -> bool {
        self.shadow_failures == 0
            && self.id_mismatches == 0
            && self.only_in_primary == 0
            && self.only_in_shadow == 0
            && self.acks_without_shadow_copy == 0
    }
}

/// Depths of one queue on both sides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueueComparison {
    pub queue: QueueName,
    pub primary_total: u64,
    pub shadow_total: Option<u64>,
}

impl QueueComparison {
    pub fn matches(&self) -> bool {
        self.shadow_total == Some(self.primary_total)
    }
}

/// Writes to both the service below (the primary) and a shadow, reads from the primary.
pub struct ShadowLayer {
    shadow: Arc<dyn MessagingService>,
    shadow_timeout: Duration,
    leases: Mutex<Leases>,
    counters: Counters,
    last_error: Mutex<Option<String>>,
}

impl ShadowLayer {
    pub fn new(shadow: Arc<dyn MessagingService>) -> Self {
        ShadowLayer {
            shadow,
            shadow_timeout: Duration::from_secs(1),
            leases: Mutex::new(Leases::default()),
            counters: Counters::default(),
            last_error: Mutex::new(None),
        }
    }

    /// Longest wait for the shadow on each mirrored call (default 1 s).
    pub fn with_shadow_timeout(mut self, timeout: Duration) -> Self {
        self.shadow_timeout = timeout;
        self
    }

    pub fn shadow(&self) -> &Arc<dyn MessagingService> {
        &self.shadow
    }

    /// Runs a shadow call: its result, or `None` after counting its failure.
    async fn on_shadow<T>(&self, op: Op, fut: impl Future<Output = Result<T>>) -> Option<T> {
        let error = match tokio::time::timeout(self.shadow_timeout, fut).await {
            Ok(Ok(v)) => return Some(v),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("{op} timed out after {:?}", self.shadow_timeout),
        };
        tracing::warn!(%op, %error, shadow = %self.shadow.provider(), "shadow call failed");
        self.counters
            .shadow_failures
            .fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(format!("{op}: {error}"));
        None
    }

    async fn mirror_write<T>(&self, op: Op, fut: impl Future<Output = Result<T>>) -> Option<T> {
        let r = self.on_shadow(op, fut).await;
        if r.is_some() {
            self.counters
                .writes_mirrored
                .fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn compare_batches(
        &self,
        queue: &QueueName,
        primary: &[ReceivedMessage],
        shadow: &[ReceivedMessage],
    ) {
        self.counters
            .receives_compared
            .fetch_add(1, Ordering::Relaxed);
        let primary_ids: HashSet<MessageId> =
            primary.iter().map(|m| m.metadata.message_id).collect();
        let shadow_ids: HashSet<MessageId> = shadow.iter().map(|m| m.metadata.message_id).collect();
        let mut l = self.leases.lock();
        for m in primary {
            if l.primary.len() >= MAX_TRACKED_LEASES {
                self.counters
                    .untracked_leases
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            l.primary
                .insert((queue.clone(), m.receipt().clone()), m.metadata.message_id);
        }
        for m in shadow {
            if l.shadow.len() < MAX_TRACKED_LEASES {
                l.shadow
                    .insert((queue.clone(), m.metadata.message_id), m.receipt().clone());
            }
        }
        for id in &primary_ids {
            let key = (queue.clone(), *id);
            if !shadow_ids.contains(id) && !l.only_shadow.remove(&key) {
                l.only_primary.insert(key);
            }
        }
        for id in &shadow_ids {
            let key = (queue.clone(), *id);
            if !primary_ids.contains(id) && !l.only_primary.remove(&key) {
                l.only_shadow.insert(key);
            }
        }
    }

    /// Forgets the lease of `receipt`; returns the shadow's receipt for the same message.
    fn take_shadow_receipt(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Option<ReceiptHandle> {
        let mut l = self.leases.lock();
        let id = l.primary.remove(&(queue.clone(), receipt.clone()))?;
        let shadow = l.shadow.remove(&(queue.clone(), id));
        if shadow.is_none() {
            self.counters
                .acks_without_shadow_copy
                .fetch_add(1, Ordering::Relaxed);
        }
        shadow
    }

    fn peek_shadow_receipt(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Option<ReceiptHandle> {
        let l = self.leases.lock();
        let id = l.primary.get(&(queue.clone(), receipt.clone()))?;
        l.shadow.get(&(queue.clone(), *id)).cloned()
    }

    /// The divergence seen so far.
    pub fn report(&self) -> DivergenceReport {
        let c = &self.counters;
        let l = self.leases.lock();
        let mut sample: Vec<MessageId> = l.only_primary.iter().map(|(_, id)| *id).collect();
        sample.sort();
        sample.truncate(10);
        DivergenceReport {
            writes_mirrored: c.writes_mirrored.load(Ordering::Relaxed),
            shadow_failures: c.shadow_failures.load(Ordering::Relaxed),
            id_mismatches: c.id_mismatches.load(Ordering::Relaxed),
            receives_compared: c.receives_compared.load(Ordering::Relaxed),
            only_in_primary: l.only_primary.len() as u64,
            only_in_shadow: l.only_shadow.len() as u64,
            acks_mirrored: c.acks_mirrored.load(Ordering::Relaxed),
            acks_without_shadow_copy: c.acks_without_shadow_copy.load(Ordering::Relaxed),
            untracked_leases: c.untracked_leases.load(Ordering::Relaxed),
            sample_only_in_primary: sample,
            last_shadow_error: self.last_error.lock().clone(),
        }
    }
}

impl Layer for ShadowLayer {
    fn call(&self, request: Request<'_>, next: Next<'_>) -> impl LayerFuture {
        async move {
            let op = request.op();
            let shadow = &*self.shadow;
            match request {
                Request::Initialize => {
                    let primary = next.run(Request::Initialize).await?;
                    self.on_shadow(op, shadow.initialize()).await;
                    Ok(primary)
                }
                Request::Shutdown => {
                    let primary = next.run(Request::Shutdown).await;
                    let _ = shadow.shutdown().await;
                    primary
                }
                Request::CreateQueue { .. }
                | Request::Send { .. }
                | Request::SendBatch { .. }
                | Request::Redrive { .. }
                | Request::Purge { .. }
                | Request::DeleteQueue { .. } => {
                    let primary = next.run(request.clone()).await?;
                    let mirrored = self.mirror_write(op, dispatch(shadow, request)).await;
                    let ids_differ = match (&primary, &mirrored) {
                        (Response::MessageId(p), Some(Response::MessageId(s))) => p != s,
                        (Response::MessageIds(p), Some(Response::MessageIds(s))) => p != s,
                        _ => false,
                    };
                    if ids_differ {
                        self.counters.id_mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(primary)
                }
                Request::Receive {
                    queue,
                    max_messages,
                    visibility_timeout,
                } => {
                    let primary = next
                        .run(Request::Receive {
                            queue,
                            max_messages,
                            visibility_timeout,
                        })
                        .await?;
                    if let Response::Messages(batch) = &primary {
                        if !batch.is_empty() {
                            let mirrored = shadow.receive(queue, batch.len(), visibility_timeout);
                            let mirrored = self.on_shadow(op, mirrored).await.unwrap_or_default();
                            self.compare_batches(queue, batch, &mirrored);
                        }
                    }
                    Ok(primary)
                }
                Request::DeleteMessage { queue, receipt } => {
                    let primary = next.run(Request::DeleteMessage { queue, receipt }).await?;
                    if let Some(r) = self.take_shadow_receipt(queue, receipt) {
                        if self
                            .on_shadow(op, shadow.delete_message(queue, &r))
                            .await
                            .is_some()
                        {
                            self.counters.acks_mirrored.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(primary)
                }
                Request::DeleteMessages { queue, receipts } => {
                    let primary = next
                        .run(Request::DeleteMessages { queue, receipts })
                        .await?;
                    if let Response::Deleted(outcome) = &primary {
                        self.mirror_deletes(queue, receipts, outcome).await;
                    }
                    Ok(primary)
                }
                Request::ChangeVisibility {
                    queue,
                    receipt,
                    visibility_timeout,
                } => {
                    let primary = next
                        .run(Request::ChangeVisibility {
                            queue,
                            receipt,
                            visibility_timeout,
                        })
                        .await?;
                    // Releasing ends the lease on both sides; extending keeps tracking it.
                    let shadow_receipt = if visibility_timeout.is_zero() {
                        self.take_shadow_receipt(queue, receipt)
                    } else {
                        self.peek_shadow_receipt(queue, receipt)
                    };
                    if let Some(r) = shadow_receipt {
                        let mirrored =
                            shadow.change_message_visibility(queue, &r, visibility_timeout);
                        self.on_shadow(op, mirrored).await;
                    }
                    Ok(primary)
                }
                Request::DeadLetter {
                    queue,
                    receipt,
                    reason,
                } => {
                    let primary = next
                        .run(Request::DeadLetter {
                            queue,
                            receipt,
                            reason,
                        })
                        .await?;
                    if let Some(r) = self.take_shadow_receipt(queue, receipt) {
                        self.on_shadow(op, shadow.dead_letter_message(queue, &r, reason))
                            .await;
                    }
                    Ok(primary)
                }
                // Reads, waits and extension calls are the primary's alone.
                other => next.run(other).await,
            }
        }
    }

    /// A native stream would bypass the comparison; consumers receive through the layer.
    fn allows_native_stream(&self) -> bool {
        false
    }

    fn requirements(&self, next: Next<'_>) -> ResourceRequirements {
        let (p, s) = (
            next.service().resource_requirements(),
            self.shadow.resource_requirements(),
        );
        ResourceRequirements {
            db_connections: p.db_connections + s.db_connections,
            memory_mb: p.memory_mb + s.memory_mb,
        }
    }
}

impl ShadowLayer {
    async fn mirror_deletes(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
        outcome: &DeleteOutcome,
    ) {
        let rejected: HashSet<&ReceiptHandle> = outcome.rejected.iter().map(|(r, _)| r).collect();
        let shadow_receipts: Vec<ReceiptHandle> = receipts
            .iter()
            .filter(|r| !rejected.contains(r))
            .filter_map(|r| self.take_shadow_receipt(queue, r))
            .collect();
        if shadow_receipts.is_empty() {
            return;
        }
        let mirrored = self.shadow.delete_messages(queue, &shadow_receipts);
        if let Some(o) = self.on_shadow(Op::DeleteMessages, mirrored).await {
            self.counters
                .acks_mirrored
                .fetch_add(o.deleted as u64, Ordering::Relaxed);
        }
    }
}

/// A primary service with a [`ShadowLayer`] on top.
pub type ShadowService = Layered<ShadowLayer>;

impl ShadowService {
    pub fn new(primary: Arc<dyn MessagingService>, shadow: Arc<dyn MessagingService>) -> Self {
        Layered::wrap(primary, ShadowLayer::new(shadow))
    }

    /// Longest wait for the shadow on each mirrored call (default 1 s).
    pub fn with_shadow_timeout(mut self, timeout: Duration) -> Self {
        self.layer_mut().shadow_timeout = timeout;
        self
    }

    /// Compares the total depth (visible + in flight + delayed) of `queue` on both sides.
    pub async fn compare_queue(&self, queue: &QueueName) -> Result<QueueComparison> {
        let primary = self.inner().get_queue_stats(queue).await?.total();
        let layer = self.layer();
        let shadow = layer
            .on_shadow(Op::Stats, layer.shadow.get_queue_stats(queue))
            .await
            .map(|s| s.total());
        Ok(QueueComparison {
            queue: queue.clone(),
            primary_total: primary,
            shadow_total: shadow,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::OutgoingMessage;
    use crate::providers::in_memory::InMemoryMessageService;
    use crate::resilience::fault::{FaultControl, FaultInjectingService};

    async fn pair(
        name: &str,
    ) -> (
        ShadowService,
        Arc<dyn MessagingService>,
        Arc<FaultControl>,
        QueueName,
    ) {
        let primary: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let shadow_mem: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let fault = FaultInjectingService::new(shadow_mem.clone());
        let control = fault.control();
        let svc = ShadowService::new(primary, Arc::new(fault));
        let queue = QueueName::new(name).unwrap();
        svc.create_queue(&queue).await.unwrap();
        (svc, shadow_mem, control, queue)
    }

    async fn drain(svc: &ShadowService, queue: &QueueName) -> usize {
        let mut n = 0;
        loop {
            let got = svc
                .receive(queue, 7, Duration::from_secs(30))
                .await
                .unwrap();
            if got.is_empty() {
                return n;
            }
            n += got.len();
            // Alternate single and batch acks so both mirror paths run.
            let (first, rest) = got.split_at(1);
            svc.delete_message(queue, first[0].receipt()).await.unwrap();
            let receipts: Vec<_> = rest.iter().map(|m| m.receipt().clone()).collect();
            svc.delete_messages(queue, &receipts).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_healthy_shadow_mirrors_everything_and_reports_no_divergence() {
        let (svc, shadow, _control, queue) = pair("shadow_ok").await;
        for i in 0..50u8 {
            svc.send(&queue, OutgoingMessage::new(vec![i]))
                .await
                .unwrap();
        }
        let batch = (0..50u8).map(|i| OutgoingMessage::new(vec![i])).collect();
        svc.send_batch(&queue, batch).await.unwrap();
        assert_eq!(
            shadow.get_queue_stats(&queue).await.unwrap().message_count,
            100
        );
        assert!(svc.compare_queue(&queue).await.unwrap().matches());
        assert_eq!(drain(&svc, &queue).await, 100);
        let report = svc.report();
        assert!(report.is_consistent(), "{report:?}");
        assert_eq!(report.acks_mirrored, 100);
        assert_eq!(report.writes_mirrored, 1 + 50 + 1);
        assert_eq!(
            shadow.get_queue_stats(&queue).await.unwrap().total(),
            0,
            "shadow drained too"
        );
    }

    #[tokio::test]
    async fn shadow_failures_never_fail_the_caller_and_show_as_divergence() {
        let (svc, shadow, control, queue) = pair("shadow_bad").await;
        let mut lost = Vec::new();
        for i in 0..100u8 {
            if i % 10 == 3 {
                control.fail_next(1);
            }
            let id = svc
                .send(&queue, OutgoingMessage::new(vec![i]))
                .await
                .unwrap();
            if i % 10 == 3 {
                lost.push(id);
            }
        }
        let cmp = svc.compare_queue(&queue).await.unwrap();
        assert_eq!((cmp.primary_total, cmp.shadow_total), (100, Some(90)));
        assert!(!cmp.matches());
        assert_eq!(
            drain(&svc, &queue).await,
            100,
            "the caller sees every message"
        );
        let report = svc.report();
        assert_eq!(report.shadow_failures, 10);
        assert_eq!(report.only_in_primary, 10);
        assert_eq!(report.acks_without_shadow_copy, 10);
        lost.sort();
        assert_eq!(report.sample_only_in_primary, lost);
        assert!(report
            .last_shadow_error
            .unwrap()
            .contains("injected fault during send"));
        assert_eq!(shadow.get_queue_stats(&queue).await.unwrap().total(), 0);

        // A shadow that is down entirely still leaves the primary path working.
        control.fail_always();
        svc.send(&queue, OutgoingMessage::new("x")).await.unwrap();
        assert_eq!(
            svc.receive(&queue, 10, Duration::from_secs(5))
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_shadow_is_cut_off_by_its_timeout() {
        let (svc, _shadow, control, queue) = pair("shadow_slow").await;
        let svc = svc.with_shadow_timeout(Duration::from_millis(100));
        control.set_latency(Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        svc.send(&queue, OutgoingMessage::new("x")).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(svc.report().shadow_failures, 1);
    }
}
