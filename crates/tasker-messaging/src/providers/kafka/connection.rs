//! Clients and their lifecycle: the producer and admin client, each queue's consumer and
//! its fetcher task, and the process-wide sharing of them.
//!
//! **One consumer-group member per queue per process.** Kafka gives each partition to one
//! member of a group, so two members cannot share a partition's records the way the contract
//! shares a queue's messages between receivers. Every `KafkaMessageService` in a process that
//! talks to the same brokers with the same settings therefore shares one [`Shared`]: one
//! producer, and per queue one consumer (group `tasker-<queue>`) with one lease table. Any
//! service of the process can receive, ack or release any of that table's messages; other
//! processes get other partitions (or none) by Kafka's assignment. The last service dropped
//! closes the consumers (leaving the group, committing the acked prefix).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::FutureExt;
use parking_lot::Mutex;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::errors;
use super::leases::{Leases, SEQ_BITS};
use super::settings::KafkaSettings;
use super::{codec, KafkaMessageService};
use crate::error::{MessagingError, Result};
use crate::queue_name::QueueName;
use crate::service::MessagingHealth;

/// What this process shares per broker list and settings.
pub(super) struct Shared {
    pub settings: KafkaSettings,
    pub producer: FutureProducer,
    pub admin: AdminClient<DefaultClientContext>,
    /// Queues known to exist, with their options (read once per process).
    pub queues: Mutex<HashMap<QueueName, Arc<QueueInfo>>>,
    /// Open consumers, by queue.
    pub handles: Mutex<HashMap<QueueName, Arc<QueueHandle>>>,
}

/// A queue's shape: partitions and dead-lettering.
#[derive(Debug)]
pub(super) struct QueueInfo {
    pub partitions: i32,
    pub max_receive_count: u32,
    pub dead_letter: Option<QueueName>,
}

/// One queue's consumer, its lease table and its fetcher.
pub(super) struct QueueHandle {
    pub name: QueueName,
    pub info: Arc<QueueInfo>,
    pub leases: Arc<Mutex<Leases>>,
    /// Woken when records become ready (fetched, released).
    pub ready: Arc<Notify>,
    /// Wakes the fetcher when the buffer has room again.
    pub room: Arc<Notify>,
    consumer: Mutex<Option<Arc<StreamConsumer<QueueContext>>>>,
    subscribed: AtomicBool,
    stop: Arc<Notify>,
    stopped: Arc<AtomicBool>,
    task: Mutex<Option<JoinHandle<()>>>,
    max_buffered: usize,
}

/// The most records the provider's producer puts in one record batch
/// (`batch.num.messages`), and so how far before a committed offset a consumer starts reading
/// when it is assigned a partition (see [`QueueContext`]).
pub(super) const MAX_BATCH_RECORDS: i64 = 1_000;

/// Rewinds newly assigned partitions (below) and hands revoked partitions' leases back
/// (another member reads them from the last commit).
///
/// **Why assigned partitions are rewound.** The committed offset of a partition is the first
/// unacked record, which usually lies inside a record batch. Kafka answers a fetch at such an
/// offset with the whole batch (the client drops the records before it); tansu 0.6 (memory
/// storage) answers only with batches that *start* at or after it, so a consumer starting there
/// never sees the rest of that batch (issue 17: a restarted consumer got none of the unacked
/// records). So each assigned partition with a committed offset `c` starts at
/// `c - MAX_BATCH_RECORDS` (clamped by the broker's `auto.offset.reset=earliest`), where some
/// batch begins at or before `c` for every batch written by this provider, and the lease table
/// skips the records below `c`. Against Kafka this re-reads at most that many records per
/// assignment, never delivers them twice.
pub(super) struct QueueContext {
    leases: Arc<Mutex<Leases>>,
    /// Bound on the committed-offset lookup made while assigning.
    timeout: Duration,
}

impl ClientContext for QueueContext {}

impl QueueContext {
    /// Sets each assigned partition's start offset before its committed one (see above) and
    /// tells the lease table to skip what lies before the committed one. A partition whose
    /// committed offset cannot be read keeps librdkafka's own start (the committed offset).
    fn rewind(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let committed = match consumer.committed_offsets(tpl.clone(), self.timeout) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "kafka: committed offsets unreadable on assignment; not rewinding");
                return;
            }
        };
        let mut leases = self.leases.lock();
        for e in committed.elements() {
            let rdkafka::Offset::Offset(c) = e.offset() else {
                continue;
            };
            if c <= 0 || e.error().is_err() {
                continue;
            }
            let start = (c - MAX_BATCH_RECORDS).max(0);
            if tpl
                .set_partition_offset(e.topic(), e.partition(), rdkafka::Offset::Offset(start))
                .is_ok()
            {
                leases.skip_to(e.partition(), c);
            }
        }
    }
}

impl ConsumerContext for QueueContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr as E;
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match err {
            E::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.rewind(consumer, tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            E::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                let mut leases = self.leases.lock();
                for e in tpl.elements() {
                    leases.revoke(e.partition());
                }
                result
            }
            other => {
                tracing::warn!(error = ?other, "kafka: rebalance error");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "kafka: applying a rebalance failed");
        }
    }
}

static REGISTRY: OnceLock<Mutex<HashMap<String, Weak<Shared>>>> = OnceLock::new();
static NEXT_TAG: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &settings.brokers)
        .set("client.id", "tasker-messaging")
        .set("allow.auto.create.topics", "false")
        .set("socket.keepalive.enable", "true")
        .set("log_level", "3");
    c
}

impl Shared {
    /// The process's shared clients for these settings, created on first use.
    pub fn get(settings: &KafkaSettings) -> Result<Arc<Shared>> {
        let key = format!("{settings:?}");
        let registry = REGISTRY.get_or_init(|| Mutex::new(HashMap::new()));
        let mut registry = registry.lock();
        if let Some(shared) = registry.get(&key).and_then(Weak::upgrade) {
            return Ok(shared);
        }
        let timeout_ms = settings.operation_timeout.as_millis().to_string();
        let producer: FutureProducer = base_config(settings)
            .set("message.timeout.ms", &timeout_ms)
            .set("linger.ms", "1")
            .set("batch.num.messages", MAX_BATCH_RECORDS.to_string())
            .set("acks", "all")
            .create()
            .map_err(|e| errors::map("create producer", None, &e, settings.operation_timeout))?;
        let admin: AdminClient<DefaultClientContext> =
            base_config(settings).create().map_err(|e| {
                errors::map("create admin client", None, &e, settings.operation_timeout)
            })?;
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            producer,
            admin,
            queues: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
        });
        registry.retain(|_, w| w.strong_count() > 0);
        registry.insert(key, Arc::downgrade(&shared));
        Ok(shared)
    }

    /// The group a queue's consumers join.
    pub fn group(queue: &QueueName) -> String {
        format!("tasker-{queue}")
    }

    /// The queue's consumer and table, created (not yet subscribed) on first use.
    pub fn handle(&self, queue: &QueueName, info: Arc<QueueInfo>) -> Result<Arc<QueueHandle>> {
        let mut handles = self.handles.lock();
        if let Some(h) = handles.get(queue) {
            return Ok(h.clone());
        }
        let tag = NEXT_TAG.fetch_add(1, Ordering::Relaxed) % (1 << (64 - SEQ_BITS));
        let leases = Arc::new(Mutex::new(Leases::new(tag)));
        let s = &self.settings;
        let consumer: StreamConsumer<QueueContext> = base_config(s)
            .set("group.id", Self::group(queue))
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                s.commit_interval.as_millis().to_string(),
            )
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", s.fetch_wait.as_millis().to_string())
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .create_with_context(QueueContext {
                leases: leases.clone(),
                timeout: s.operation_timeout,
            })
            .map_err(|e| errors::map("create consumer", Some(queue), &e, s.operation_timeout))?;
        let handle = Arc::new(QueueHandle {
            name: queue.clone(),
            info,
            leases,
            ready: Arc::new(Notify::new()),
            room: Arc::new(Notify::new()),
            consumer: Mutex::new(Some(Arc::new(consumer))),
            subscribed: AtomicBool::new(false),
            stop: Arc::new(Notify::new()),
            stopped: Arc::new(AtomicBool::new(false)),
            task: Mutex::new(None),
            max_buffered: s.max_buffered,
        });
        handles.insert(queue.clone(), handle.clone());
        Ok(handle)
    }

    /// Forgets a queue (deleted): closes its consumer.
    pub async fn forget(&self, queue: &QueueName) {
        self.queues.lock().remove(queue);
        let handle = self.handles.lock().remove(queue);
        if let Some(h) = handle {
            h.close().await;
        }
    }
}

impl QueueHandle {
    /// The consumer, unless the handle was closed.
    pub fn consumer(&self) -> Option<Arc<StreamConsumer<QueueContext>>> {
        self.consumer.lock().clone()
    }

    /// Joins the queue's group and starts the fetcher, once.
    pub fn subscribe(&self) -> Result<()> {
        if self.subscribed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let Some(consumer) = self.consumer() else {
            return Err(MessagingError::NotInitialized(
                "the queue's consumer was closed".into(),
            ));
        };
        consumer.subscribe(&[self.name.as_str()]).map_err(|e| {
            self.subscribed.store(false, Ordering::Release);
            errors::map("subscribe", Some(&self.name), &e, Duration::from_secs(1))
        })?;
        let task = tokio::spawn(fetch(
            consumer,
            self.leases.clone(),
            self.ready.clone(),
            self.room.clone(),
            self.stop.clone(),
            self.stopped.clone(),
            self.max_buffered,
        ));
        *self.task.lock() = Some(task);
        Ok(())
    }

    /// Stores the commit points (committed with the next auto-commit, and on close).
    pub fn store(&self, name: &str, points: &[(i32, i64)]) {
        if points.is_empty() {
            return;
        }
        let Some(consumer) = self.consumer() else {
            return;
        };
        let mut tpl = TopicPartitionList::with_capacity(points.len());
        for &(partition, offset) in points {
            let _ = tpl.add_partition_offset(name, partition, rdkafka::Offset::Offset(offset));
        }
        if let Err(e) = consumer.store_offsets(&tpl) {
            // The partition went to another member: it reads these records again.
            tracing::debug!(queue = name, error = %e, "acked offsets not stored");
        }
    }

    /// Stops the fetcher and closes the consumer (leaves the group, commits what was
    /// stored), off the async threads.
    pub async fn close(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_one();
        self.room.notify_one();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let consumer = self.consumer.lock().take();
        if let Some(consumer) = consumer {
            let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        }
    }
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_one();
        self.room.notify_one();
    }
}

/// Records moved into the lease table under one lock, at most.
const INGEST_BATCH: usize = 256;

/// Moves fetched records into the lease table, waking waiters; pauses while the table holds
/// `max_buffered` ready records. Waits on the consumer (librdkafka wakes it), never polls.
async fn fetch(
    consumer: Arc<StreamConsumer<QueueContext>>,
    leases: Arc<Mutex<Leases>>,
    ready: Arc<Notify>,
    room: Arc<Notify>,
    stop: Arc<Notify>,
    stopped: Arc<AtomicBool>,
    max_buffered: usize,
) {
    let mut batch = Vec::with_capacity(INGEST_BATCH);
    while !stopped.load(Ordering::Acquire) {
        if leases.lock().ready_len() >= max_buffered {
            tokio::select! {
                _ = room.notified() => {}
                _ = stop.notified() => break,
            }
            continue;
        }
        tokio::select! {
            _ = stop.notified() => break,
            record = consumer.recv() => match record {
                Ok(record) => {
                    // With the first record, everything the consumer already holds (up to a
                    // bound): decoded outside the lock, then one lock and one wakeup for all.
                    batch.push(codec::decode(&record));
                    drop(record);
                    while batch.len() < INGEST_BATCH {
                        match consumer.recv().now_or_never() {
                            Some(Ok(record)) => batch.push(codec::decode(&record)),
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "kafka consumer error");
                                break;
                            }
                            None => break,
                        }
                    }
                    let woke = {
                        let mut table = leases.lock();
                        batch
                            .drain(..)
                            .fold(false, |woke, (entry, not_before)| {
                                table.ingest(entry, not_before) | woke
                            })
                    };
                    if woke {
                        ready.notify_waiters();
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "kafka consumer error");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = stop.notified() => break,
                    }
                }
            }
        }
    }
}

impl KafkaMessageService {
    /// Connects: asks the brokers for their metadata (proves they answer).
    pub(super) async fn connect(&self) -> Result<()> {
        self.check_open()?;
        let shared = self.shared.clone();
        let timeout = self.settings.operation_timeout;
        tokio::task::spawn_blocking(move || {
            shared
                .producer
                .client()
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(|e| errors::map("connect", None, &e, timeout))
        })
        .await
        .map_err(|e| errors::provider("connect", e.to_string()))?
    }

    pub(super) fn check_open(&self) -> Result<()> {
        if self.shut_down.load(Ordering::Acquire) {
            Err(MessagingError::NotInitialized(
                "the Kafka service was shut down".into(),
            ))
        } else {
            Ok(())
        }
    }

    pub(super) async fn health(&self) -> Result<MessagingHealth> {
        if self.check_open().is_err() {
            return Ok(MessagingHealth::Unhealthy {
                error: "the service was shut down".into(),
            });
        }
        if let Err(e) = self.connect().await {
            return Ok(MessagingHealth::Unhealthy {
                error: e.to_string(),
            });
        }
        let handles: Vec<_> = self.shared.handles.lock().values().cloned().collect();
        let (mut depth, mut in_flight) = (0, 0);
        for h in handles {
            let counts = h.leases.lock().counts();
            depth += counts.ready;
            in_flight += counts.leased;
        }
        Ok(MessagingHealth::Healthy {
            queue_depth: depth,
            in_flight,
        })
    }

    /// Shuts this service down; the shared consumers close when the last service using
    /// them does (here when this was the last one).
    pub(super) async fn stop(&self) -> Result<()> {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // This service and the registry's weak entry: no other service shares the clients.
        if Arc::strong_count(&self.shared) == 1 {
            let handles: Vec<_> = self.shared.handles.lock().drain().map(|(_, h)| h).collect();
            for h in handles {
                h.close().await;
            }
            let shared = self.shared.clone();
            let timeout = self.settings.operation_timeout;
            let _ = tokio::task::spawn_blocking(move || shared.producer.flush(timeout)).await;
        }
        Ok(())
    }
}
