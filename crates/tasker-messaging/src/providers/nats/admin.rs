//! Streams and consumers: creating a queue (and its dead-letter queue), looking up a queue's
//! metadata once per service, delete, purge, stats and redrive.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::connection::Settling;
use super::errors::{STREAM_NAME_EXISTS, STREAM_NOT_FOUND};
use super::{codec, subject_of, NatsMessageService, QueueMeta, CONSUMER};
use crate::error::{MessagingError, Result};
use crate::queue_name::QueueName;
use crate::service::{QueueOptions, QueueStats};

/// The part of a stream's info the provider reads.
#[derive(Deserialize)]
pub(super) struct StreamInfo {
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: StreamConfig,
    state: StreamState,
}

#[derive(Deserialize, Default)]
struct StreamConfig {
    #[serde(default)]
    num_replicas: usize,
}

fn rfc3339_ns(text: Option<&str>) -> Option<i128> {
    let t = DateTime::parse_from_rfc3339(text?).ok()?;
    t.timestamp_nanos_opt().map(i128::from)
}

#[derive(Deserialize)]
struct StreamState {
    messages: u64,
    #[serde(default)]
    first_ts: Option<String>,
}

/// The part of a consumer's info the provider reads.
#[derive(Deserialize)]
pub(super) struct ConsumerInfo {
    config: ConsumerConfig,
    pub num_pending: u64,
    num_ack_pending: u64,
}

#[derive(Deserialize)]
struct ConsumerConfig {
    #[serde(default)]
    description: Option<String>,
    ack_wait: u64,
}

#[derive(Deserialize)]
struct Purged {
    #[serde(default)]
    purged: u64,
}

#[derive(Deserialize)]
struct Deleted {}

/// A queue's counts as JetStream keeps them.
pub(super) struct Counts {
    /// In the stream: not yet acked (receivable, leased, or released).
    pub messages: u64,
    /// Delivered and not yet acked (leased, or whose lease ended and not delivered since).
    pub ack_pending: u64,
    /// Never delivered.
    pub pending: u64,
    pub first: Option<DateTime<Utc>>,
}

/// `max_receive_count=N; dead_letter_queue=NAME`, the consumer's description.
fn describe(max_receive_count: u32, dead_letter_queue: Option<&QueueName>) -> String {
    match dead_letter_queue {
        Some(dlq) => format!(
            "tasker-mq queue; max_receive_count={max_receive_count}; dead_letter_queue={dlq}"
        ),
        None => "tasker-mq queue; max_receive_count=0".to_owned(),
    }
}

fn parse_description(text: &str) -> (u32, Option<QueueName>) {
    let mut max = 0;
    let mut dlq = None;
    for part in text.split(';').map(str::trim) {
        if let Some(v) = part.strip_prefix("max_receive_count=") {
            max = v.parse().unwrap_or(0);
        } else if let Some(v) = part.strip_prefix("dead_letter_queue=") {
            dlq = QueueName::new(v).ok();
        }
    }
    if dlq.is_none() {
        max = 0;
    }
    (max, dlq)
}

impl NatsMessageService {
    /// The queue's metadata: cached, or read from its consumer (`QueueNotFound` if none).
    #[inline]
    pub(super) async fn meta(&self, queue: &QueueName) -> Result<Arc<QueueMeta>> {
        if let Some(meta) = self.queues.read().get(queue) {
            return Ok(meta.clone());
        }
        self.load_meta(queue).await
    }

    async fn load_meta(&self, queue: &QueueName) -> Result<Arc<QueueMeta>> {
        // A cluster answers 503 "JetStream system temporarily unavailable" for a while after a
        // stream is deleted or while its meta leader changes: asked again after a short,
        // doubling wait, up to request_timeout, so the caller gets the answer (often
        // QueueNotFound) rather than the transient.
        let mut settling = Settling::api(self.settings.request_timeout);
        let (info, stream) = loop {
            let (info, stream) = tokio::join!(self.consumer_info(queue), self.stream_info(queue));
            let transient = [info.as_ref().err(), stream.as_ref().err()]
                .into_iter()
                .flatten()
                .any(|e| {
                    matches!(
                        e,
                        MessagingError::Provider {
                            retryable: true,
                            ..
                        }
                    )
                });
            if !transient || !settling.wait().await {
                break (info?, stream?);
            }
        };
        let (max_receive_count, dead_letter_queue) =
            parse_description(info.config.description.as_deref().unwrap_or(""));
        let meta = Arc::new(QueueMeta {
            subject: subject_of(queue).into(),
            next: format!("$JS.API.CONSUMER.MSG.NEXT.{queue}.{CONSUMER}").into(),
            max_receive_count,
            dead_letter_queue,
            ack_wait: Duration::from_nanos(info.config.ack_wait),
            created_ns: rfc3339_ns(stream.created.as_deref()).unwrap_or(0),
            replicated: stream.config.num_replicas > 1,
        });
        self.queues.write().insert(queue.clone(), meta.clone());
        Ok(meta)
    }

    /// Forgets a queue (it was deleted, here or elsewhere).
    pub(super) fn forget(&self, queue: &QueueName) {
        self.queues.write().remove(queue);
    }

    /// A `QueueNotFound` from an operation also drops the queue from the cache.
    pub(super) fn note_missing(&self, queue: &QueueName, error: MessagingError) -> MessagingError {
        if matches!(error, MessagingError::QueueNotFound { .. }) {
            self.forget(queue);
        }
        error
    }

    pub(super) async fn consumer_info(&self, queue: &QueueName) -> Result<ConsumerInfo> {
        self.api::<ConsumerInfo, _>(
            "consumer info",
            format!("CONSUMER.INFO.{queue}.{CONSUMER}"),
            &json!({}),
        )
        .await?
        .map_err(|e| self.note_missing(queue, self.api_err("consumer info", queue, &e)))
    }

    pub(super) async fn stream_info(&self, queue: &QueueName) -> Result<StreamInfo> {
        self.api::<StreamInfo, _>("stream info", format!("STREAM.INFO.{queue}"), &json!({}))
            .await?
            .map_err(|e| self.note_missing(queue, self.api_err("stream info", queue, &e)))
    }

    pub(super) async fn counts(&self, queue: &QueueName) -> Result<Counts> {
        let (stream, consumer) = tokio::join!(self.stream_info(queue), self.consumer_info(queue));
        let (stream, consumer) = (stream?, consumer?);
        let first = stream
            .state
            .first_ts
            .as_deref()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        Ok(Counts {
            messages: stream.state.messages,
            ack_pending: consumer.num_ack_pending,
            pending: consumer.num_pending,
            first,
        })
    }

    /// Creates the stream and consumer of `queue` if missing (an existing one keeps its
    /// configuration).
    async fn ensure_queue(
        &self,
        queue: &QueueName,
        max_receive_count: u32,
        dead_letter_queue: Option<&QueueName>,
    ) -> Result<()> {
        let description = describe(max_receive_count, dead_letter_queue);
        let stream = json!({
            "name": queue.as_str(),
            "description": description,
            "subjects": [subject_of(queue)],
            "retention": "workqueue",
            "storage": "file",
            "num_replicas": self.settings.replicas,
            "discard": "old",
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msg_size": -1,
            "max_consumers": -1,
        });
        let subject = format!("STREAM.CREATE.{queue}");
        let created = match self
            .api::<serde_json::Value, _>("create stream", subject.clone(), &stream)
            .await
        {
            // A replicated stream is answered once its group has elected a leader, which on
            // a busy cluster can outlast the request (the creation still goes on): asked once
            // more, a creation with the same configuration answers as soon as it is done.
            Err(MessagingError::Timeout { .. }) if self.settings.replicas > 1 => {
                self.api::<serde_json::Value, _>("create stream", subject, &stream)
                    .await?
            }
            other => other?,
        };
        if let Err(e) = created {
            if e.error_code().0 != STREAM_NAME_EXISTS {
                return Err(self.api_err("create stream", queue, &e));
            }
        }
        if self.consumer_info(queue).await.is_ok() {
            // There already: the first creation's options stay.
            return Ok(());
        }
        let ack_wait = self
            .settings
            .default_visibility_timeout
            .max(Duration::from_secs(1));
        let consumer = json!({
            "stream_name": queue.as_str(),
            "config": {
                "durable_name": CONSUMER,
                "description": description,
                "deliver_policy": "all",
                "ack_policy": "explicit",
                "ack_wait": u64::try_from(ack_wait.as_nanos()).unwrap_or(u64::MAX),
                "max_deliver": -1,
                "filter_subject": subject_of(queue),
                "replay_policy": "instant",
                "max_ack_pending": -1,
                "max_waiting": 512,
            }
        });
        // On a cluster the stream's own servers answer its creation; the meta leader, which
        // answers the consumer's, may not have applied the stream's assignment yet and calls
        // the stream missing: asked again after a short, doubling wait, up to request_timeout.
        let mut settling = Settling::api(self.settings.request_timeout);
        let created = loop {
            let created = self
                .api::<serde_json::Value, _>(
                    "create consumer",
                    format!("CONSUMER.DURABLE.CREATE.{queue}.{CONSUMER}"),
                    &consumer,
                )
                .await?;
            let missing = matches!(&created, Err(e) if e.error_code().0 == STREAM_NOT_FOUND);
            if !missing || !settling.wait().await {
                break created;
            }
        };
        if let Err(e) = created {
            // Already there with another configuration (a first creation's options stay).
            if self.consumer_info(queue).await.is_err() {
                return Err(self.api_err("create consumer", queue, &e));
            }
        }
        Ok(())
    }

    pub(super) async fn create_with(
        &self,
        queue: &QueueName,
        options: &QueueOptions,
    ) -> Result<()> {
        self.link()?;
        let max = options
            .max_receive_count
            .unwrap_or(self.settings.default_max_receive_count);
        let dlq = if max > 0 {
            let dlq = queue.dead_letter(&self.settings.dead_letter_suffix)?;
            self.ensure_queue(&dlq, 0, None).await?;
            Some(dlq)
        } else {
            None
        };
        self.ensure_queue(queue, max, dlq.as_ref()).await?;
        self.forget(queue);
        Ok(())
    }

    async fn delete_stream(&self, queue: &QueueName) -> Result<bool> {
        match self
            .api::<Deleted, _>(
                "delete stream",
                format!("STREAM.DELETE.{queue}"),
                &json!({}),
            )
            .await?
        {
            Ok(_) => Ok(true),
            Err(e) if e.error_code().0 == STREAM_NOT_FOUND => Ok(false),
            Err(e) => Err(self.api_err("delete stream", queue, &e)),
        }
    }

    pub(super) async fn remove_queue(&self, queue: &QueueName) -> Result<()> {
        let dlq = match self.meta(queue).await {
            Ok(meta) => meta.dead_letter_queue.clone(),
            Err(MessagingError::QueueNotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        self.forget(queue);
        if !self.delete_stream(queue).await? {
            return Err(MessagingError::QueueNotFound {
                queue: queue.to_string(),
            });
        }
        let dlq = match dlq {
            Some(dlq) => dlq,
            None => queue.dead_letter(&self.settings.dead_letter_suffix)?,
        };
        self.forget(&dlq);
        self.delete_stream(&dlq).await?;
        Ok(())
    }

    pub(super) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        self.api::<Purged, _>("purge", format!("STREAM.PURGE.{queue}"), &json!({}))
            .await?
            .map(|p| p.purged)
            .map_err(|e| self.note_missing(queue, self.api_err("purge", queue, &e)))
    }

    pub(super) async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let meta = self.meta(queue).await?;
        let counts = self.counts(queue).await?;
        let dead_letter_count = match &meta.dead_letter_queue {
            Some(dlq) => match self.stream_info(dlq).await {
                Ok(info) => Some(info.state.messages),
                Err(MessagingError::QueueNotFound { .. }) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let visible = counts.messages.saturating_sub(counts.ack_pending);
        let oldest = counts
            .first
            .filter(|_| counts.messages > 0)
            .map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0);
        Ok(QueueStats {
            queue_name: queue.clone(),
            message_count: visible.max(counts.pending.min(counts.messages)),
            in_flight_count: Some(counts.ack_pending.min(counts.messages)),
            delayed_count: Some(0),
            oldest_message_age_seconds: oldest,
            dead_letter_count,
        })
    }

    /// Moves up to `max` receivable dead letters back: each is published to the queue (ids
    /// and payload kept, the dead-letter record dropped) and then acked in the DLQ.
    pub(super) async fn redrive(&self, queue: &QueueName, max: usize) -> Result<u64> {
        let meta = self.meta(queue).await?;
        let Some(dlq) = meta.dead_letter_queue.clone() else {
            return Ok(0);
        };
        let dlq_meta = self.meta(&dlq).await?;
        let link = self.link()?;
        let mut moved = 0u64;
        let mut left = max;
        while left > 0 {
            let asked = left.min(super::MAX_BATCH);
            let batch = self.fetch(&dlq, &dlq_meta, asked).await?;
            if batch.is_empty() {
                break;
            }
            let n = batch.len();
            let mut acks = Vec::with_capacity(n);
            for m in &batch {
                let headers = codec::moved_headers(m.headers.as_ref(), None);
                let ack = link
                    .js
                    .publish_with_headers(meta.subject.clone(), headers, m.payload.clone())
                    .await
                    .map_err(|e| self.err("redrive (publish)", Some(queue), e))?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await
                    .map_err(|e| self.err("redrive (publish ack)", Some(queue), e))?;
            }
            let receipts: Vec<_> = batch.iter().filter_map(|m| m.reply.clone()).collect();
            self.ack_subjects(&dlq, &dlq_meta, &receipts).await?;
            moved += n as u64;
            left = left.saturating_sub(n);
            if n < asked {
                break;
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip() {
        let dlq = QueueName::new("orders_dlq").unwrap();
        let (max, got) = parse_description(&describe(3, Some(&dlq)));
        assert_eq!((max, got), (3, Some(dlq)));
        assert_eq!(parse_description(&describe(0, None)), (0, None));
        assert_eq!(parse_description("made by someone else"), (0, None));
    }
}
