//! Queues: SQS names and URLs (cached per service), creation with the dead-letter queue and
//! its redrive policy, delete, purge, stats from queue attributes, redrive back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use parking_lot::Mutex;

use super::receipts::Leases;
use super::{QueueMeta, SqsMessageService};
use crate::error::{MessagingError, Result};
use crate::message::OutgoingMessage;
use crate::queue_name::QueueName;
use crate::service::{QueueOptions, QueueStats};

/// Counts from a queue's attributes.
#[derive(Default)]
pub(super) struct Counts {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

impl SqsMessageService {
    /// The SQS name of a queue: the same characters (our rule is a subset of SQS's), with
    /// `.fifo` on FIFO queues.
    pub(super) fn sqs_name(&self, queue: &QueueName) -> String {
        if self.settings.fifo {
            format!("{}.fifo", queue.as_str())
        } else {
            queue.as_str().to_owned()
        }
    }

    /// The cached metadata of a queue, looked up once (`GetQueueUrl`, its redrive policy).
    pub(super) async fn meta(&self, queue: &QueueName) -> Result<Arc<QueueMeta>> {
        if let Some(m) = self.queues.read().get(queue) {
            return Ok(m.clone());
        }
        let client = self.client()?;
        let sqs_name = self.sqs_name(queue);
        let url = match client.get_queue_url().queue_name(&sqs_name).send().await {
            Ok(out) => out.queue_url.unwrap_or_default(),
            Err(e) => return Err(self.mapper("get_queue_url", queue.as_str()).map(e)),
        };
        let attrs = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| self.mapper("get_queue_attributes", queue.as_str()).map(e))?;
        let max_receive_count = attrs
            .attributes
            .as_ref()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|v| match &v["maxReceiveCount"] {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            })
            .unwrap_or(0) as u32;
        let dead_letter_of = queue
            .as_str()
            .strip_suffix(self.settings.dead_letter_suffix.as_str())
            .filter(|_| !self.settings.dead_letter_suffix.is_empty())
            .and_then(|s| QueueName::new(s).ok());
        let meta = Arc::new(QueueMeta {
            name: queue.clone(),
            sqs_name,
            url,
            max_receive_count,
            dead_letter_of,
            leases: Mutex::new(Leases::default()),
        });
        Ok(self
            .queues
            .write()
            .entry(queue.clone())
            .or_insert(meta)
            .clone())
    }

    /// Forgets a queue's cached URL (it was deleted, here or elsewhere).
    pub(super) fn forget(&self, queue: &QueueName) {
        self.queues.write().remove(queue);
    }

    /// Maps an error and forgets the queue's URL when SQS says the queue is gone.
    pub(super) fn gone(&self, queue: &QueueName, e: MessagingError) -> MessagingError {
        if matches!(e, MessagingError::QueueNotFound { .. }) {
            self.forget(queue);
        }
        e
    }

    async fn create_one(
        &self,
        queue: &QueueName,
        redrive: Option<(String, u32)>,
    ) -> Result<String> {
        let client = self.client()?;
        let mut req = client
            .create_queue()
            .queue_name(self.sqs_name(queue))
            .attributes(
                QueueAttributeName::MaximumMessageSize,
                super::SQS_MAX_MESSAGE_BYTES.to_string(),
            );
        if self.settings.fifo {
            req = req
                .attributes(QueueAttributeName::FifoQueue, "true")
                .attributes(QueueAttributeName::ContentBasedDeduplication, "false");
        }
        if let Some((arn, max)) = redrive {
            let policy = serde_json::json!({
                "deadLetterTargetArn": arn,
                "maxReceiveCount": max,
            });
            req = req.attributes(QueueAttributeName::RedrivePolicy, policy.to_string());
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.mapper("create_queue", queue.as_str()).map(e))?;
        Ok(out.queue_url.unwrap_or_default())
    }

    /// Creates the queue and its dead-letter queue when missing; an existing queue keeps the
    /// options of its first creation (SQS refuses a create with other attributes).
    pub(super) async fn create_with(
        &self,
        queue: &QueueName,
        options: &QueueOptions,
    ) -> Result<()> {
        match self.meta(queue).await {
            Ok(_) => return Ok(()),
            Err(MessagingError::QueueNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let client = self.client()?;
        let dlq = queue.dead_letter(&self.settings.dead_letter_suffix)?;
        let dlq_url = self.create_one(&dlq, None).await?;
        let max = options
            .max_receive_count
            .unwrap_or(self.settings.default_max_receive_count);
        let redrive = if max > 0 {
            let attrs = client
                .get_queue_attributes()
                .queue_url(&dlq_url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(|e| self.mapper("get_queue_attributes", dlq.as_str()).map(e))?;
            let arn = attrs
                .attributes
                .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
                .ok_or_else(|| {
                    self.mapper("create_queue", dlq.as_str())
                        .permanent("SQS gave no ARN for the dead-letter queue")
                })?;
            Some((arn, max.min(1000)))
        } else {
            None
        };
        match self.create_one(queue, redrive).await {
            Ok(_) => {}
            // Created meanwhile by someone else with other options: theirs stay.
            Err(MessagingError::Provider { message, .. })
                if message.contains("QueueAlreadyExists")
                    || message.contains("QueueNameExists") => {}
            Err(e) => return Err(e),
        }
        self.meta(queue).await.map(|_| ())
    }

    /// Deletes the queue and its dead-letter queue.
    pub(super) async fn remove_queue(&self, queue: &QueueName) -> Result<()> {
        let meta = self.meta(queue).await?;
        let client = self.client()?;
        let dlq = queue.dead_letter(&self.settings.dead_letter_suffix)?;
        let deleted = client.delete_queue().queue_url(&meta.url).send().await;
        self.forget(queue);
        if let Err(e) = deleted {
            return Err(self.mapper("delete_queue", queue.as_str()).map(e));
        }
        match self.meta(&dlq).await {
            Ok(d) => {
                let r = client.delete_queue().queue_url(&d.url).send().await;
                self.forget(&dlq);
                match r {
                    Ok(_) => Ok(()),
                    Err(e) => match self.mapper("delete_queue", dlq.as_str()).map(e) {
                        MessagingError::QueueNotFound { .. } => Ok(()),
                        other => Err(other),
                    },
                }
            }
            Err(MessagingError::QueueNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The queue's approximate counts.
    pub(super) async fn counts(&self, queue: &QueueName) -> Result<Counts> {
        let meta = self.meta(queue).await?;
        let out = self
            .client()?
            .get_queue_attributes()
            .queue_url(&meta.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| {
                self.gone(
                    queue,
                    self.mapper("get_queue_attributes", queue.as_str()).map(e),
                )
            })?;
        let attrs = out.attributes.unwrap_or_default();
        let get = |a: &HashMap<QueueAttributeName, String>, k: QueueAttributeName| {
            a.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        Ok(Counts {
            visible: get(&attrs, QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(
                &attrs,
                QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            ),
            delayed: get(
                &attrs,
                QueueAttributeName::ApproximateNumberOfMessagesDelayed,
            ),
        })
    }

    pub(super) async fn stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let dlq = queue.dead_letter(&self.settings.dead_letter_suffix)?;
        let (c, d) = futures::join!(self.counts(queue), self.counts(&dlq));
        let c = c?;
        let dead_letter_count = match d {
            Ok(d) => Some(d.visible + d.in_flight + d.delayed),
            Err(MessagingError::QueueNotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(QueueStats {
            queue_name: queue.clone(),
            message_count: c.visible,
            in_flight_count: Some(c.in_flight),
            delayed_count: Some(c.delayed),
            oldest_message_age_seconds: None,
            dead_letter_count,
        })
    }

    /// `PurgeQueue`; returns the (approximate) count just before it.
    pub(super) async fn purge(&self, queue: &QueueName) -> Result<u64> {
        let before = self.counts(queue).await?;
        let meta = self.meta(queue).await?;
        self.client()?
            .purge_queue()
            .queue_url(&meta.url)
            .send()
            .await
            .map_err(|e| self.gone(queue, self.mapper("purge_queue", queue.as_str()).map(e)))?;
        meta.leases.lock().clear();
        Ok(before.visible + before.in_flight + before.delayed)
    }

    /// Moves up to `max` receivable dead letters back: receive from the dead-letter queue,
    /// send copies with their ids (no dead-letter record), delete the dead letters. A crash
    /// between the send and the delete leaves a duplicate, never a gap.
    pub(super) async fn redrive(&self, queue: &QueueName, max: usize) -> Result<u64> {
        let source = self.meta(queue).await?;
        let dlq = queue.dead_letter(&self.settings.dead_letter_suffix)?;
        let dead = match self.meta(&dlq).await {
            Ok(d) => d,
            Err(MessagingError::QueueNotFound { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut moved = 0u64;
        while (moved as usize) < max {
            let want = (max - moved as usize).min(10);
            let batch = self
                .receive_from(&dead, want, Duration::from_secs(30), false)
                .await?;
            if batch.is_empty() {
                break;
            }
            let copies: Vec<OutgoingMessage> = batch.iter().map(|m| m.to_outgoing()).collect();
            self.send_to(&source, copies, None, true).await?;
            let receipts: Vec<_> = batch.iter().map(|m| m.receipt().clone()).collect();
            self.delete_on(&dead, &receipts).await?;
            moved += batch.len() as u64;
        }
        Ok(moved)
    }
}
