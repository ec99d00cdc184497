//! `receive_many`: one `ReceiveMessage` (at most 10, SQS's limit) leasing for the visibility
//! timeout given, without long polling (the contract's receive returns at once); `wait`
//! watches the queue's approximate count with a backoff (see the module docs for why not a
//! long poll).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

use super::codec::{decode, DecodeContext};
use super::receipts::secs;
use super::{QueueMeta, SqsMessageService};
use crate::error::Result;
use crate::message::ReceivedMessage;
use crate::queue_name::QueueName;

/// First and longest pause of `wait` between two looks at the queue's count.
const WAIT_FIRST: Duration = Duration::from_millis(50);
const WAIT_LONGEST: Duration = Duration::from_millis(500);

impl SqsMessageService {
    pub(super) async fn receive_many(
        &self,
        queue: &QueueName,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let meta = self.meta(queue).await?;
        if max == 0 {
            return Ok(Vec::new());
        }
        self.receive_from(&meta, max.min(10), visibility, true)
            .await
    }

    /// The source queue and its receive limit when `meta` is a dead-letter queue SQS moves
    /// messages into.
    async fn native_source(&self, meta: &QueueMeta) -> Option<(QueueName, u32)> {
        let source = meta.dead_letter_of.as_ref()?;
        let m = self.meta(source).await.ok()?;
        (m.max_receive_count > 0).then(|| (source.clone(), m.max_receive_count))
    }

    /// One `ReceiveMessage`; `track` records the leases for `dead_letter_message`.
    pub(super) async fn receive_from(
        &self,
        meta: &Arc<QueueMeta>,
        max: usize,
        visibility: Duration,
        track: bool,
    ) -> Result<Vec<ReceivedMessage>> {
        let out = self
            .client()?
            .receive_message()
            .queue_url(&meta.url)
            .max_number_of_messages(max as i32)
            .visibility_timeout(secs(visibility))
            .wait_time_seconds(0)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| {
                self.gone(
                    &meta.name,
                    self.mapper("receive", meta.name.as_str()).map(e),
                )
            })?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let native = if meta.dead_letter_of.is_some() {
            self.native_source(meta).await
        } else {
            None
        };
        let ctx = DecodeContext {
            queue: meta.name.as_str(),
            sqs_name: &meta.sqs_name,
            native_source: native.as_ref().map(|(q, n)| (q, *n)),
            visibility,
        };
        let received: Vec<ReceivedMessage> = messages
            .into_iter()
            .filter_map(|m| decode(m, &ctx))
            .collect();
        if track {
            let mut leases = meta.leases.lock();
            for m in &received {
                leases.insert(m, visibility);
            }
        }
        Ok(received)
    }

    /// Returns once the queue's approximate visible count is above zero, or after `max_wait`.
    pub(super) async fn wait(&self, queue: &QueueName, max_wait: Duration) {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut pause = WAIT_FIRST;
        loop {
            let ready = match self.meta(queue).await {
                Ok(meta) => match self.client() {
                    Ok(client) => client
                        .get_queue_attributes()
                        .queue_url(&meta.url)
                        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                        .send()
                        .await
                        .ok()
                        .and_then(|o| o.attributes)
                        .and_then(|a| {
                            a.get(&QueueAttributeName::ApproximateNumberOfMessages)
                                .and_then(|v| v.parse::<u64>().ok())
                        })
                        .is_some_and(|n| n > 0),
                    Err(_) => false,
                },
                Err(_) => false,
            };
            if ready {
                return;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(WAIT_LONGEST);
        }
    }
}
