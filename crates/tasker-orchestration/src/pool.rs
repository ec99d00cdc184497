//! Executor pools: workers pulling one queue through `MessagingService`, scaled between a
//! minimum and a maximum, stopped gracefully.
//!
//! A worker loops over [`process_tracked`]; when a batch comes back empty it awaits
//! `wait_for_messages` (provider wakeups or a bounded sleep), never spinning. Scaling down
//! cancels the newest workers, which finish their batch first. Shutdown cancels every worker,
//! waits up to a drain timeout for their batches to settle, then aborts the stragglers and
//! gives their leases back (`change_message_visibility(0)`), so no message stays invisible.
//! Workers own clones of the service and handler, never the pool, so dropping the pool
//! cancels them and nothing leaks.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tasker_messaging::{MessagingService, QueueMessage, QueueName};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::executor::{
    process_tracked, ExecutorConfig, LeaseTracker, MessageHandler, ProcessBatchResult,
};

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub min_workers: usize,
    pub max_workers: usize,
    pub executor: ExecutorConfig,
    /// First wait for messages when a receive comes back empty; on providers without
    /// wakeups (`wakeup_notifications` absent) every idle wait, so it bounds their latency.
    pub idle_wait: Duration,
    /// On providers with wakeups, an idle worker's wait doubles from `idle_wait` up to this
    /// while its receives keep coming back empty: a new message still wakes it at once, and
    /// an idle process costs a receive per pool every few seconds instead of ten a second.
    /// A message that becomes receivable without arriving (a delay or a lease that ends) is
    /// seen up to this late by an idle pool; any received message resets the wait.
    pub idle_wait_max: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            min_workers: 1,
            max_workers: 4,
            executor: ExecutorConfig::default(),
            idle_wait: Duration::from_millis(100),
            idle_wait_max: Duration::from_secs(5),
        }
    }
}

/// Counters of a pool, readable while it runs.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub batches: AtomicU64,
    pub processed: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
    pub retried: AtomicU64,
    pub errors: AtomicU64,
}

impl PoolStats {
    fn record(&self, r: &ProcessBatchResult) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.processed
            .fetch_add(r.items_processed as u64, Ordering::Relaxed);
        self.failed
            .fetch_add(r.items_failed as u64, Ordering::Relaxed);
        self.skipped
            .fetch_add(r.items_skipped as u64, Ordering::Relaxed);
        self.retried
            .fetch_add(r.items_retried as u64, Ordering::Relaxed);
    }

    /// A point-in-time copy.
    pub fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Copy of [`PoolStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolSnapshot {
    pub batches: u64,
    pub processed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub retried: u64,
    pub errors: u64,
}

/// What shutdown did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Workers that finished their batch and stopped.
    pub drained: usize,
    /// Workers stopped mid-batch at the drain timeout.
    pub aborted: usize,
    /// Leases given back for aborted workers.
    pub released: usize,
}

struct Worker {
    stop: CancellationToken,
    leases: Arc<LeaseTracker>,
    handle: JoinHandle<()>,
}

/// An idle worker's waits: from `idle_wait`, doubling up to `idle_wait_max` where the provider
/// wakes waiters on arrival, else `idle_wait` each time.
fn idle_waits(config: &PoolConfig, wakeups: bool) -> backon::ExponentialBackoff {
    let max = if wakeups {
        config.idle_wait_max
    } else {
        config.idle_wait
    };
    crate::resilient::doubling_waits(config.idle_wait, max)
}

/// A type-erased pool, as the coordinator holds them.
#[async_trait::async_trait]
pub trait Pool: Send + Sync {
    fn name(&self) -> &str;
    fn queue(&self) -> &QueueName;
    fn min_workers(&self) -> usize;
    fn max_workers(&self) -> usize;
    fn stats(&self) -> PoolSnapshot;
    async fn worker_count(&self) -> usize;
    /// Sets the worker count (clamped to min..=max); returns the new count.
    async fn scale_to(&self, workers: usize) -> usize;
    /// The batch size the pool was configured with.
    fn configured_batch_size(&self) -> usize;
    /// Batch size workers use from now on (backpressure shrinks it; clamped to 1..=configured).
    fn set_batch_size(&self, batch_size: usize);
    async fn shutdown(&self, drain_timeout: Duration) -> ShutdownReport;
    /// The permanent error that stopped the pool (a deleted queue, bad configuration).
    fn fatal_error(&self) -> Option<String> {
        None
    }
    /// Notified (`notify_one`) when a worker that was idle receives messages again, so a
    /// coordinator that slowed down while everything was idle looks again at once.
    fn activity(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// Workers of one executor (or one namespace) on one queue.
pub struct ExecutorPool<T> {
    name: String,
    queue: QueueName,
    messaging: Arc<dyn MessagingService>,
    handler: Arc<dyn MessageHandler<T>>,
    config: PoolConfig,
    batch_size: Arc<AtomicUsize>,
    stats: Arc<PoolStats>,
    workers: tokio::sync::Mutex<Vec<Worker>>,
    root: CancellationToken,
    /// The permanent error that stopped the pool's workers, if any.
    fatal: Arc<parking_lot::Mutex<Option<String>>>,
    /// See [`Pool::activity`].
    activity: Arc<tokio::sync::Notify>,
}

impl<T> Drop for ExecutorPool<T> {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

impl<T: QueueMessage + 'static> ExecutorPool<T> {
    /// A pool with no workers yet; call `scale_to` (or `start`).
    pub fn new(
        name: impl Into<String>,
        queue: QueueName,
        messaging: Arc<dyn MessagingService>,
        handler: Arc<dyn MessageHandler<T>>,
        config: PoolConfig,
    ) -> Self {
        let batch_size = Arc::new(AtomicUsize::new(config.executor.batch_size));
        ExecutorPool {
            name: name.into(),
            queue,
            messaging,
            handler,
            config,
            batch_size,
            stats: Arc::new(PoolStats::default()),
            workers: tokio::sync::Mutex::new(Vec::new()),
            root: CancellationToken::new(),
            fatal: Arc::new(parking_lot::Mutex::new(None)),
            activity: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Starts the minimum number of workers.
    pub async fn start(&self) -> usize {
        self.scale_to(self.config.min_workers).await
    }

    fn spawn_worker(&self) -> Worker {
        let stop = self.root.child_token();
        let leases = Arc::new(LeaseTracker::default());
        let (messaging, handler, queue) = (
            self.messaging.clone(),
            self.handler.clone(),
            self.queue.clone(),
        );
        let (config, batch_size, stats) = (
            self.config.clone(),
            self.batch_size.clone(),
            self.stats.clone(),
        );
        let (token, tracker) = (stop.clone(), leases.clone());
        let (root, fatal, name) = (self.root.clone(), self.fatal.clone(), self.name.clone());
        let activity = self.activity.clone();
        let handle = tokio::spawn(async move {
            let faults = config.executor.ride.faults.clone();
            // A fresh sequence after every success: the wait grows only while failures last.
            let mut delays = config.executor.ride.backoff.delays();
            // Likewise the idle wait grows only while receives come back empty.
            let idle_waits = || idle_waits(&config, messaging.capabilities().wakeup_notifications);
            let mut idle = idle_waits();
            let mut was_idle = false;
            while !token.is_cancelled() {
                let size = batch_size.load(Ordering::Relaxed);
                let batch = process_tracked(
                    &messaging,
                    &queue,
                    &*handler,
                    &config.executor,
                    size,
                    Some(&tracker),
                )
                .await;
                match batch {
                    Ok(r) => {
                        faults.success();
                        delays = config.executor.ride.backoff.delays();
                        if r.received > 0 {
                            stats.record(&r);
                            if std::mem::take(&mut was_idle) {
                                idle = idle_waits();
                                activity.notify_one();
                            }
                            continue;
                        }
                        was_idle = true;
                        let wait = idle.next().unwrap_or(config.idle_wait_max);
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = messaging.wait_for_messages(&queue, wait) => {}
                        }
                    }
                    Err(error) if error.is_retryable() => {
                        // The backend is away: wait, longer each time, and try again. One
                        // warning per outage (FaultCounters), not one per batch.
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        faults.failure("receive", &error);
                        let delay = delays.next().unwrap_or(config.executor.ride.backoff.max);
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    Err(error) => {
                        // Permanent (a deleted queue, bad configuration): retrying cannot help.
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(pool = %name, queue = %queue, %error, "pool stopped");
                        fatal.lock().get_or_insert_with(|| {
                            format!("pool {name} (queue {queue}) stopped: {error}")
                        });
                        root.cancel();
                        break;
                    }
                }
            }
        });
        Worker {
            stop,
            leases,
            handle,
        }
    }
}

#[async_trait::async_trait]
impl<T: QueueMessage + 'static> Pool for ExecutorPool<T> {
    fn name(&self) -> &str {
        &self.name
    }
    fn queue(&self) -> &QueueName {
        &self.queue
    }
    fn min_workers(&self) -> usize {
        self.config.min_workers
    }
    fn max_workers(&self) -> usize {
        self.config.max_workers
    }
    fn activity(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.activity.clone())
    }
    fn stats(&self) -> PoolSnapshot {
        self.stats.snapshot()
    }
    fn fatal_error(&self) -> Option<String> {
        self.fatal.lock().clone()
    }

    async fn worker_count(&self) -> usize {
        let mut workers = self.workers.lock().await;
        workers.retain(|w| !w.handle.is_finished());
        workers.len()
    }

    async fn scale_to(&self, target: usize) -> usize {
        if self.root.is_cancelled() {
            return 0;
        }
        let target = target.clamp(self.config.min_workers, self.config.max_workers);
        let mut workers = self.workers.lock().await;
        workers.retain(|w| !w.handle.is_finished());
        while workers.len() < target {
            let worker = self.spawn_worker();
            workers.push(worker);
        }
        while workers.len() > target {
            // Newest first; it finishes its batch, then exits.
            if let Some(worker) = workers.pop() {
                worker.stop.cancel();
            }
        }
        workers.len()
    }

    fn configured_batch_size(&self) -> usize {
        self.config.executor.batch_size
    }

    fn set_batch_size(&self, batch_size: usize) {
        let size = batch_size.clamp(1, self.config.executor.batch_size.max(1));
        self.batch_size.store(size, Ordering::Relaxed);
    }

    async fn shutdown(&self, drain_timeout: Duration) -> ShutdownReport {
        self.root.cancel();
        let workers: Vec<Worker> = self.workers.lock().await.drain(..).collect();
        let mut report = ShutdownReport::default();
        let deadline = tokio::time::Instant::now() + drain_timeout;
        for mut worker in workers {
            match tokio::time::timeout_at(deadline, &mut worker.handle).await {
                Ok(_) => report.drained += 1,
                Err(_) => {
                    worker.handle.abort();
                    let _ = worker.handle.await;
                    report.aborted += 1;
                    for receipt in worker.leases.take() {
                        match self
                            .messaging
                            .change_message_visibility(&self.queue, &receipt, Duration::ZERO)
                            .await
                        {
                            Ok(()) => report.released += 1,
                            Err(error) => {
                                tracing::warn!(queue = %self.queue, %error, "could not release a lease")
                            }
                        }
                    }
                }
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::{Handled, HandlerError};
    use async_trait::async_trait;
    use tasker_messaging::{
        InMemoryMessageService, MessagingServiceExt, QueuedMessage, StepMessage,
    };

    struct Sleepy {
        work: Duration,
        done: AtomicU64,
    }

    #[async_trait]
    impl MessageHandler<StepMessage> for Sleepy {
        async fn handle(&self, _m: &QueuedMessage<StepMessage>) -> Result<Handled, HandlerError> {
            tokio::time::sleep(self.work).await;
            self.done.fetch_add(1, Ordering::Relaxed);
            Ok(Handled::Done)
        }
    }

    async fn setup(
        name: &str,
        work: Duration,
        n: usize,
    ) -> (Arc<dyn MessagingService>, QueueName, Arc<Sleepy>) {
        let messaging: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let q = QueueName::new(name).unwrap();
        messaging.create_queue(&q).await.unwrap();
        let steps: Vec<_> = (0..n).map(|_| StepMessage::random()).collect();
        messaging.send_messages(&q, &steps).await.unwrap();
        let handler = Arc::new(Sleepy {
            work,
            done: AtomicU64::new(0),
        });
        (messaging, q, handler)
    }

    fn pool_config(min: usize, max: usize) -> PoolConfig {
        PoolConfig {
            min_workers: min,
            max_workers: max,
            executor: ExecutorConfig {
                batch_size: 5,
                visibility_timeout: Duration::from_secs(600),
                ..ExecutorConfig::default()
            },
            ..PoolConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn workers_drain_the_queue_and_scale_within_bounds() {
        let (messaging, q, handler) = setup("pool_drain", Duration::from_millis(10), 100).await;
        let pool = ExecutorPool::new(
            "t",
            q.clone(),
            messaging.clone(),
            handler.clone(),
            pool_config(1, 3),
        );
        assert_eq!(pool.start().await, 1);
        assert_eq!(pool.scale_to(10).await, 3, "clamped to max");
        assert_eq!(pool.scale_to(0).await, 1, "clamped to min");
        pool.scale_to(3).await;
        while handler.done.load(Ordering::Relaxed) < 100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let report = pool.shutdown(Duration::from_secs(5)).await;
        assert_eq!(report.aborted, 0);
        assert_eq!(pool.stats().processed, 100);
        assert_eq!(messaging.get_queue_stats(&q).await.unwrap().total(), 0);
        assert_eq!(pool.worker_count().await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases_the_leases_of_workers_that_do_not_drain_in_time() {
        let (messaging, q, handler) = setup("pool_abort", Duration::from_secs(3600), 10).await;
        let pool = ExecutorPool::new(
            "t",
            q.clone(),
            messaging.clone(),
            handler.clone(),
            pool_config(2, 2),
        );
        pool.start().await;
        // Let both workers lease a batch of 5.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let stats = messaging.get_queue_stats(&q).await.unwrap();
        assert_eq!(stats.in_flight_count, Some(10));
        let report = pool.shutdown(Duration::from_secs(1)).await;
        assert_eq!(
            report,
            ShutdownReport {
                drained: 0,
                aborted: 2,
                released: 10
            }
        );
        let stats = messaging.get_queue_stats(&q).await.unwrap();
        assert_eq!(
            (stats.message_count, stats.in_flight_count),
            (10, Some(0)),
            "nothing stuck invisible"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_workers_wait_instead_of_polling() {
        let (messaging, q, handler) = setup("pool_idle", Duration::ZERO, 0).await;
        let counting = Arc::new(tasker_messaging::conformance::CountingService::new(
            messaging.clone(),
        ));
        let pool = ExecutorPool::new(
            "t",
            q.clone(),
            counting.clone() as Arc<dyn MessagingService>,
            handler.clone(),
            pool_config(1, 1),
        );
        pool.start().await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        // The wait doubles from idle_wait (100 ms) to idle_wait_max (5 s) on a provider with
        // wakeups: 7 receives in the first 6.3 s, then one per 5 s; not 600 in a minute.
        let receives = counting.receives();
        assert!(
            (15..=20).contains(&receives),
            "{receives} receives in 60 s idle"
        );
        // A message still wakes the idle worker at once, and tells the coordinator.
        let activity = pool.activity().expect("an executor pool reports activity");
        let sent = tokio::time::Instant::now();
        messaging
            .send_messages(&q, &[StepMessage::random()])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_millis(50), activity.notified())
            .await
            .expect("the idle worker took the message at once");
        assert_eq!(handler.done.load(Ordering::Relaxed), 1);
        assert!(sent.elapsed() < Duration::from_millis(50));
        pool.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn dropping_the_pool_stops_its_workers() {
        let (messaging, q, handler) = setup("pool_drop", Duration::ZERO, 0).await;
        let pool = ExecutorPool::new(
            "t",
            q.clone(),
            messaging.clone(),
            handler.clone(),
            pool_config(2, 2),
        );
        pool.start().await;
        let weak = Arc::downgrade(&handler);
        drop(handler);
        drop(pool);
        // Workers exit at their next wake-up (at most idle_wait) and drop their handler clone.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(weak.upgrade().is_none(), "a worker outlived its pool");
    }
}
