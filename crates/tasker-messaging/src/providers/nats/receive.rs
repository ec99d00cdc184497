//! Receiving: one pull request (`no_wait`) per batch, deliveries over the queue's receive
//! limit moved to its dead-letter queue before the batch is returned, the lease set to the
//! asked visibility timeout; and `wait_for_messages` on a subscription to the queue's subject.

use std::time::Duration;

use async_nats::{Message, StatusCode};
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use super::{codec, subject_of, NatsMessageService, QueueMeta, MAX_BATCH};
use crate::error::{MessagingError, Result};
use crate::message::{DeadLetterInfo, DeadLetterReason, ReceivedMessage};
use crate::queue_name::QueueName;

/// Rounds of pull requests a receive makes to fill the places of dead-lettered deliveries.
const FILL_ROUNDS: usize = 4;

/// `-NAK {"delay": <ns>}`: the lease ends `d` from now (the message stays leased until then).
#[inline]
pub(super) fn nak_for(d: Duration) -> bytes::Bytes {
    if d.is_zero() {
        bytes::Bytes::from_static(b"-NAK")
    } else {
        format!("-NAK {{\"delay\":{}}}", d.as_nanos()).into()
    }
}

impl NatsMessageService {
    /// Up to `n` deliveries from the queue's consumer, in one pull request that returns at
    /// once. The messages are leased (ack pending) from here on.
    pub(super) async fn fetch(
        &self,
        queue: &QueueName,
        meta: &QueueMeta,
        n: usize,
    ) -> Result<Vec<Message>> {
        let link = self.link()?;
        let inbox = link.client.new_inbox();
        let mut sub = link
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| self.err("receive (subscribe)", None, e))?;
        let request = serde_json::to_vec(&json!({"batch": n, "no_wait": true}))
            .map_err(|e| self.err("receive", None, e))?;
        link.client
            .publish_with_reply(meta.next.clone(), inbox, request.into())
            .await
            .map_err(|e| self.err("receive (pull request)", Some(queue), e))?;
        let deadline = Instant::now() + self.settings.request_timeout;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Ok(next) = tokio::time::timeout_at(deadline, sub.next()).await else {
                if out.is_empty() {
                    return Err(MessagingError::Timeout {
                        operation: "receive",
                        after: self.settings.request_timeout,
                    });
                }
                break;
            };
            let Some(message) = next else { break };
            match message.status {
                None | Some(StatusCode::OK) => out.push(message),
                // No (more) messages, or the request expired.
                Some(StatusCode::NOT_FOUND) | Some(StatusCode::TIMEOUT) => break,
                Some(StatusCode::NO_RESPONDERS) => {
                    return Err(self.note_missing(
                        queue,
                        MessagingError::QueueNotFound {
                            queue: queue.to_string(),
                        },
                    ))
                }
                Some(status) => {
                    let why = message.description.clone().unwrap_or_default();
                    // The consumer was deleted under the request, or the server is busy.
                    if why.to_ascii_lowercase().contains("deleted") {
                        return Err(self.note_missing(
                            queue,
                            MessagingError::QueueNotFound {
                                queue: queue.to_string(),
                            },
                        ));
                    }
                    return Err(MessagingError::Provider {
                        provider: crate::service::ProviderKind::Nats,
                        operation: "receive",
                        message: format!("pull request answered {status}: {why}"),
                        retryable: true,
                    });
                }
            }
        }
        let _ = sub.unsubscribe().await;
        Ok(out)
    }

    pub(super) async fn receive_many(
        &self,
        queue: &QueueName,
        max: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let link = self.link()?;
        let meta = self.meta(queue).await?;
        let max = max.min(MAX_BATCH);
        let mut out = Vec::with_capacity(max);
        for _ in 0..FILL_ROUNDS {
            let want = max - out.len();
            if want == 0 {
                break;
            }
            let batch = self.fetch(queue, &meta, want).await?;
            let fetched = batch.len();
            let mut over = Vec::new();
            for m in batch {
                let Some(r) = codec::decode(queue, &m) else {
                    // Every delivery of a pull consumer has an ack subject.
                    tracing::warn!(queue = %queue, "a delivery without an ack subject was skipped");
                    continue;
                };
                if meta.max_receive_count > 0 && r.metadata.receive_count > meta.max_receive_count {
                    over.push((m, r));
                } else {
                    out.push(r);
                }
            }
            if over.is_empty() || fetched < want {
                if !over.is_empty() {
                    self.dead_letter_over_limit(queue, &meta, over).await;
                }
                break;
            }
            self.dead_letter_over_limit(queue, &meta, over).await;
        }
        if visibility_timeout != meta.ack_wait {
            let nak = nak_for(visibility_timeout);
            for m in &out {
                let subject = m.metadata.receipt_handle.as_text().unwrap_or_default();
                link.client
                    .publish(subject.to_owned(), nak.clone())
                    .await
                    .map_err(|e| self.err("receive (lease)", Some(queue), e))?;
            }
        }
        Ok(out)
    }

    /// Copies deliveries over the receive limit to the dead-letter queue (awaiting the
    /// server's acknowledgement), then acks them; on failure they are released to be moved
    /// by a later receive. Never drops one.
    async fn dead_letter_over_limit(
        &self,
        queue: &QueueName,
        meta: &QueueMeta,
        over: Vec<(Message, ReceivedMessage)>,
    ) {
        let count = over.len();
        if let Err(e) = self.move_over_limit(queue, meta, &over).await {
            tracing::warn!(queue = %queue, over_limit = count, error = %e,
                "moving messages over their receive limit failed; they are released and retried");
            if let Ok(link) = self.link() {
                for (m, _) in &over {
                    if let Some(reply) = &m.reply {
                        let _ = link
                            .client
                            .publish(reply.clone(), nak_for(Duration::ZERO))
                            .await;
                    }
                }
            }
        }
    }

    async fn move_over_limit(
        &self,
        queue: &QueueName,
        meta: &QueueMeta,
        over: &[(Message, ReceivedMessage)],
    ) -> Result<()> {
        let link = self.link()?;
        let Some(dlq) = &meta.dead_letter_queue else {
            return Ok(());
        };
        let dlq_subject = subject_of(dlq);
        let now = chrono::Utc::now();
        let mut acks = Vec::with_capacity(over.len());
        for (m, r) in over {
            let info = DeadLetterInfo {
                source_queue: queue.clone(),
                reason: DeadLetterReason::MaxReceiveCountExceeded {
                    max_receive_count: meta.max_receive_count,
                },
                receive_count: r.metadata.receive_count.saturating_sub(1),
                dead_lettered_at: now,
                original_enqueued_at: r.metadata.enqueued_at,
            };
            let headers = codec::moved_headers(m.headers.as_ref(), Some(&info));
            let ack = link
                .js
                .publish_with_headers(dlq_subject.clone(), headers, m.payload.clone())
                .await
                .map_err(|e| self.err("dead-letter (publish)", Some(dlq), e))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| self.err("dead-letter (publish ack)", Some(dlq), e))?;
        }
        let receipts: Vec<_> = over.iter().filter_map(|(m, _)| m.reply.clone()).collect();
        self.ack_subjects(queue, meta, &receipts).await
    }

    /// Returns when a message may be receivable on `queue`, at most after `max_wait`: at
    /// once when the consumer has undelivered messages, else on the next publish to the
    /// queue's subject. Nothing is delivered or counted by waiting.
    pub(super) async fn wait(&self, queue: &QueueName, max_wait: Duration) {
        let deadline = Instant::now() + max_wait;
        let Ok(link) = self.link() else {
            tokio::time::sleep_until(deadline).await;
            return;
        };
        let Ok(mut sub) = link.client.subscribe(subject_of(queue)).await else {
            tokio::time::sleep_until(deadline).await;
            return;
        };
        // The subscription is in place before the question is asked (one connection, in
        // order), so a message is either counted here or seen by the subscription.
        match tokio::time::timeout_at(deadline, self.consumer_info(queue)).await {
            Ok(Ok(c)) if c.num_pending > 0 => return,
            Ok(Ok(_)) => {}
            // A missing queue (or an unanswered question) waits out its time: no spinning.
            Ok(Err(_)) | Err(_) => {
                tokio::time::sleep_until(deadline).await;
                return;
            }
        }
        let _ = tokio::time::timeout_at(deadline, sub.next()).await;
    }
}
