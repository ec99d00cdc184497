//! Queues as topics: lookup, creation with the dead-letter topic, delete, purge, stats and
//! redrive.
//!
//! A queue is the topic `<queue>` (settings' partition count), its dead-letter queue the
//! topic `<queue><suffix>` (itself a queue), and its options one record in the one-partition
//! topic `<queue>-meta` (`-` cannot occur in a queue name, so derived names never collide
//! with a queue's). Creating `-meta` first decides which creation's options stand: a second
//! `create_queue_with` finds it and keeps the first's. A topic without `-meta` (a dead-letter
//! queue, a topic another client made) has no receive limit.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::connection::{QueueHandle, QueueInfo, Shared};
use super::errors;
use super::KafkaMessageService;
use crate::error::{MessagingError, Result};
use crate::queue_name::QueueName;
use crate::service::{QueueOptions, QueueStats};

#[derive(Serialize, Deserialize)]
struct Meta {
    max_receive_count: u32,
}

/// How long redrive waits for a just-opened dead-letter consumer to read what is there.
const CATCH_UP: Duration = Duration::from_secs(5);

fn meta_topic(queue: &QueueName) -> String {
    format!("{queue}-meta")
}

impl KafkaMessageService {
    fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .operation_timeout(Some(self.settings.operation_timeout))
            .request_timeout(Some(self.settings.operation_timeout))
    }

    /// Creates topics; `true` per topic this call created (`false`: it existed).
    async fn create_topics(&self, topics: &[(&str, i32)]) -> Result<Vec<bool>> {
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        let results = self
            .shared
            .admin
            .create_topics(new.iter(), &self.admin_options())
            .await
            .map_err(|e| errors::map("create topic", None, &e, self.settings.operation_timeout))?;
        results
            .into_iter()
            .map(|r| match r {
                Ok(_) => Ok(true),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(false),
                Err((topic, code)) => Err(MessagingError::Provider {
                    provider: crate::service::ProviderKind::Kafka,
                    operation: "create topic",
                    message: format!("{topic}: {code}"),
                    retryable: false,
                }),
            })
            .collect()
    }

    pub(super) async fn create_with(
        &self,
        queue: &QueueName,
        options: &QueueOptions,
    ) -> Result<()> {
        self.check_open()?;
        let max = options
            .max_receive_count
            .unwrap_or(self.settings.default_max_receive_count);
        let meta = meta_topic(queue);
        let created = self.create_topics(&[(&meta, 1)]).await?;
        let max = if created[0] {
            let record = serde_json::to_vec(&Meta {
                max_receive_count: max,
            })
            .map_err(|e| errors::provider("create queue", e.to_string()))?;
            self.shared
                .producer
                .send(
                    FutureRecord::<[u8], [u8]>::to(&meta).payload(&record[..]),
                    self.settings.operation_timeout,
                )
                .await
                .map_err(|(e, _)| {
                    errors::map(
                        "create queue",
                        Some(queue),
                        &e,
                        self.settings.operation_timeout,
                    )
                })?;
            max
        } else {
            self.read_meta(queue).await?.unwrap_or(0)
        };
        let partitions = self.settings.partitions;
        let dead_letter = if max > 0 {
            let dlq = queue.dead_letter(&self.settings.dead_letter_suffix)?;
            self.create_topics(&[(dlq.as_str(), partitions)]).await?;
            Some(dlq)
        } else {
            None
        };
        self.create_topics(&[(queue.as_str(), partitions)]).await?;
        let info = Arc::new(QueueInfo {
            partitions: self.partitions_of(queue).await?,
            max_receive_count: max,
            dead_letter,
        });
        self.shared.queues.lock().insert(queue.clone(), info);
        Ok(())
    }

    /// The number of partitions of a topic; `QueueNotFound` when it does not exist.
    async fn partitions_of(&self, queue: &QueueName) -> Result<i32> {
        self.partitions_of_topic(queue.as_str().to_owned(), queue)
            .await
    }

    async fn partitions_of_topic(&self, name: String, queue: &QueueName) -> Result<i32> {
        let shared = self.shared.clone();
        let timeout = self.settings.operation_timeout;
        let topic = queue.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            let md = shared
                .producer
                .client()
                .fetch_metadata(Some(&name), timeout)
                .map_err(|e| errors::map("metadata", Some(&topic), &e, timeout))?;
            let t = md.topics().iter().find(|t| t.name() == name);
            match t {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    Ok(t.partitions().len() as i32)
                }
                _ => Err(MessagingError::QueueNotFound {
                    queue: topic.as_str().to_owned(),
                }),
            }
        })
        .await
        .map_err(|e| errors::provider("metadata", e.to_string()))?
    }

    /// The options record of a queue, `None` without one.
    async fn read_meta(&self, queue: &QueueName) -> Result<Option<u32>> {
        let settings = self.settings.clone();
        let topic = meta_topic(queue);
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &settings.brokers)
                .set("group.id", "tasker-meta-reader")
                .set("enable.auto.commit", "false")
                .set("allow.auto.create.topics", "false")
                .set("log_level", "3")
                .create()
                .map_err(|e| {
                    errors::map("read queue options", None, &e, settings.operation_timeout)
                })?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Beginning)
                .map_err(|e| {
                    errors::map("read queue options", None, &e, settings.operation_timeout)
                })?;
            consumer.assign(&tpl).map_err(|e| {
                errors::map("read queue options", None, &e, settings.operation_timeout)
            })?;
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while std::time::Instant::now() < deadline {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(m)) => {
                        let meta = m
                            .payload()
                            .and_then(|p| serde_json::from_slice::<Meta>(p).ok());
                        return Ok(meta.map(|m| m.max_receive_count));
                    }
                    Some(Err(e))
                        if e.rdkafka_error_code().is_some_and(errors::is_missing_topic) =>
                    {
                        return Ok(None);
                    }
                    Some(Err(_)) | None => {}
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| errors::provider("read queue options", e.to_string()))?
    }

    /// The queue's shape, looked up once per process; `QueueNotFound` when it does not exist.
    pub(super) async fn info(&self, queue: &QueueName) -> Result<Arc<QueueInfo>> {
        self.check_open()?;
        if let Some(info) = self.shared.queues.lock().get(queue) {
            return Ok(info.clone());
        }
        let partitions = self.partitions_of(queue).await?;
        let max = if self.meta_exists(queue).await? {
            self.read_meta(queue).await?.unwrap_or(0)
        } else {
            0
        };
        let dead_letter = if max > 0 {
            Some(queue.dead_letter(&self.settings.dead_letter_suffix)?)
        } else {
            None
        };
        let info = Arc::new(QueueInfo {
            partitions,
            max_receive_count: max,
            dead_letter,
        });
        let mut queues = self.shared.queues.lock();
        Ok(queues.entry(queue.clone()).or_insert(info).clone())
    }

    async fn meta_exists(&self, queue: &QueueName) -> Result<bool> {
        match self.partitions_of_topic(meta_topic(queue), queue).await {
            Ok(_) => Ok(true),
            Err(MessagingError::QueueNotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The queue's consumer and lease table (joining its group on first use).
    pub(super) async fn open(&self, queue: &QueueName) -> Result<Arc<QueueHandle>> {
        let info = self.info(queue).await?;
        let handle = self.shared.handle(queue, info)?;
        handle.subscribe()?;
        Ok(handle)
    }

    pub(super) async fn remove_queue(&self, queue: &QueueName) -> Result<()> {
        self.check_open()?;
        self.partitions_of(queue).await?;
        let dlq = queue.dead_letter(&self.settings.dead_letter_suffix)?;
        let meta = meta_topic(queue);
        self.shared.forget(queue).await;
        self.shared.forget(&dlq).await;
        let opts = self.admin_options();
        let results = self
            .shared
            .admin
            .delete_topics(&[queue.as_str(), dlq.as_str(), &meta], &opts)
            .await
            .map_err(|e| {
                errors::map(
                    "delete queue",
                    Some(queue),
                    &e,
                    self.settings.operation_timeout,
                )
            })?;
        for r in results {
            if let Err((topic, code)) = r {
                if !errors::is_missing_topic(code) {
                    return Err(errors::provider("delete queue", format!("{topic}: {code}")));
                }
            }
        }
        let groups = [Shared::group(queue), Shared::group(&dlq)];
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        // A group that never committed does not exist: nothing to delete.
        let _ = self.shared.admin.delete_groups(&groups, &opts).await;
        Ok(())
    }

    /// High watermark per partition, and the commit point of those this table has not read.
    async fn ends(&self, handle: &QueueHandle) -> Result<Vec<(i32, i64, i64)>> {
        let Some(consumer) = handle.consumer() else {
            return Err(MessagingError::NotInitialized(
                "the queue's consumer was closed".into(),
            ));
        };
        let topic = handle.name.clone();
        let partitions = handle.info.partitions;
        let timeout = self.settings.operation_timeout;
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(partitions as usize);
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(topic.as_str(), p);
            }
            let committed = consumer
                .committed_offsets(tpl, timeout)
                .map_err(|e| errors::map("stats", Some(&topic), &e, timeout))?;
            for p in 0..partitions {
                let (low, high) = consumer
                    .fetch_watermarks(topic.as_str(), p, timeout)
                    .map_err(|e| errors::map("stats", Some(&topic), &e, timeout))?;
                let from = match committed
                    .find_partition(topic.as_str(), p)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o.max(low),
                    _ => low,
                };
                out.push((p, high, from));
            }
            Ok(out)
        })
        .await
        .map_err(|e| errors::provider("stats", e.to_string()))?
    }

    /// Waits (at most `within`) until the table has fetched every record that was in the
    /// topic when called, so an admin operation sees what a just-opened consumer has not
    /// read yet.
    async fn catch_up(&self, handle: &QueueHandle, within: Duration) -> Result<()> {
        let ends = self.ends(handle).await?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = handle.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let behind = {
                let leases = handle.leases.lock();
                ends.iter()
                    .any(|&(p, high, from)| leases.next_fetch(p).unwrap_or(from) < high)
            };
            let now = tokio::time::Instant::now();
            if !behind || now >= deadline {
                return Ok(());
            }
            let pause = (now + Duration::from_millis(50)).min(deadline);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(pause) => {}
            }
        }
    }

    pub(super) async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let handle = self.open(queue).await?;
        let ends = self.ends(&handle).await?;
        let (counts, unfetched) = {
            let mut leases = handle.leases.lock();
            leases.expire(tokio::time::Instant::now());
            let unfetched: i64 = ends
                .iter()
                .map(|&(p, high, from)| (high - leases.next_fetch(p).unwrap_or(from)).max(0))
                .sum();
            (leases.counts(), unfetched as u64)
        };
        let dead_letter_count = match &handle.info.dead_letter {
            Some(dlq) => Some(Box::pin(self.stats(dlq)).await?.total()),
            None => None,
        };
        let oldest = counts
            .oldest
            .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0);
        Ok(QueueStats {
            queue_name: queue.clone(),
            message_count: counts.ready + unfetched,
            in_flight_count: Some(counts.leased),
            delayed_count: Some(counts.delayed),
            oldest_message_age_seconds: oldest,
            dead_letter_count,
        })
    }

    pub(super) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        let handle = self.open(queue).await?;
        self.catch_up(&handle, CATCH_UP).await?;
        let ends = self.ends(&handle).await?;
        let (removed, commits) = handle.leases.lock().purge(&ends);
        handle.store(queue.as_str(), &commits);
        Ok(removed)
    }

    pub(super) async fn redrive(&self, queue: &QueueName, max: usize) -> Result<u64> {
        let info = self.info(queue).await?;
        let Some(dlq) = info.dead_letter.clone() else {
            return Ok(0);
        };
        let handle = self.open(&dlq).await?;
        self.catch_up(&handle, CATCH_UP).await?;
        let moving = {
            let mut leases = handle.leases.lock();
            leases.expire(tokio::time::Instant::now());
            leases.take_for_move(max)
        };
        let copied = self.copy_back(queue, &handle, moving).await?;
        Ok(copied)
    }
}
