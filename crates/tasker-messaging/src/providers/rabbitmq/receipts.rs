//! Receipts and leases: delete, visibility and dead-letter by receipt, and how a lease ends.
//! A receipt names a lease in `leases.rs`; a receipt whose lease ended is refused there
//! (receipt fencing), so it never touches a later delivery of the same message.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::types::AMQPValue;
use tokio::time::Instant;

use super::admin::durable;
use super::channel::LeaseChannel;
use super::codec::{self, long_string, H_DL_AT, H_DL_COUNT, H_DL_REASON, H_DL_SOURCE};
use super::errors::invalid;
use super::leases::{self, Ended, Lease, ReceiptProblem};
use super::{Inner, RabbitMqMessageService};
use crate::config::RabbitMqQueueType;
use crate::error::{MessagingError, Result};
use crate::message::{DeadLetterReason, ReceiptHandle};
use crate::queue_name::QueueName;
use crate::service::DeleteOutcome;

/// RabbitMQ closes a channel whose delivery stays unacked past its `consumer_timeout`
/// (30 minutes by default), which ends every lease on that channel early (the messages are
/// redelivered). Leases that long need the broker's timeout raised.
const BROKER_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub(super) fn warn_if_past_consumer_timeout(visibility_timeout: Duration) {
    if visibility_timeout >= BROKER_CONSUMER_TIMEOUT {
        tracing::warn!(
            ?visibility_timeout,
            "visibility timeout at or past RabbitMQ's default consumer_timeout (30 min): \
             the broker may close the channel and redeliver early unless it is raised"
        );
    }
}

impl RabbitMqMessageService {
    /// The error for a refused receipt: `QueueNotFound` when the queue is missing.
    async fn refused(&self, queue: &QueueName, problem: ReceiptProblem) -> MessagingError {
        match self.inner.exists(queue).await {
            Err(e) => e,
            Ok(()) => invalid(queue, problem),
        }
    }

    pub(super) async fn delete_leased(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let leases = &self.inner.leases;
        let mut outcome = DeleteOutcome::default();
        // Grouped by channel: nearly always one (a stream's, or the queue's lease channel).
        struct Group {
            channel: Arc<LeaseChannel>,
            ids: Vec<u64>,
            tags: Vec<u64>,
            /// Index of each lease's receipt in `receipts`.
            at: Vec<usize>,
        }
        let mut groups: Vec<Group> = Vec::new();
        for (i, taken) in leases.take_many(queue, receipts).into_iter().enumerate() {
            match taken {
                Ok((id, lease)) => {
                    let g = match groups.iter().position(|g| g.channel.id == lease.channel.id) {
                        Some(g) => g,
                        None => {
                            groups.push(Group {
                                channel: lease.channel.clone(),
                                ids: Vec::with_capacity(receipts.len()),
                                tags: Vec::with_capacity(receipts.len()),
                                at: Vec::with_capacity(receipts.len()),
                            });
                            groups.len() - 1
                        }
                    };
                    let g = &mut groups[g];
                    g.ids.push(id);
                    g.tags.push(lease.tag);
                    g.at.push(i);
                }
                // Idempotent: the message is already gone. A dead-lettered one lives on in
                // the dead-letter queue, so its receipt is refused (below).
                Err(ReceiptProblem::Ended(Ended::Deleted)) => outcome.deleted += 1,
                Err(problem) => outcome
                    .rejected
                    .push((receipts[i].clone(), invalid(queue, problem))),
            }
        }
        // A refused receipt, or a repeated delete, on a missing queue is QueueNotFound (asked
        // only then: a plain delete costs no round trip).
        let check_queue = outcome.deleted > 0 || !outcome.rejected.is_empty();
        for g in groups {
            match g.channel.ack(g.tags).await {
                Ok(()) => {
                    outcome.deleted += g.ids.len();
                    leases.ended_many(g.ids, Ended::Deleted);
                }
                Err(e) => {
                    let error = self.inner.map("basic.ack", Some(queue), e);
                    leases.ended_many(g.ids, Ended::Lost);
                    for i in g.at {
                        outcome.rejected.push((receipts[i].clone(), error.clone()));
                    }
                }
            }
        }
        if check_queue {
            self.inner.exists(queue).await?;
        }
        Ok(outcome)
    }

    pub(super) async fn set_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        let leases = &self.inner.leases;
        if !visibility_timeout.is_zero() {
            warn_if_past_consumer_timeout(visibility_timeout);
            return match leases.extend(queue, receipt, Instant::now() + visibility_timeout) {
                Ok(()) => Ok(()),
                Err(p) => Err(self.refused(queue, p).await),
            };
        }
        let (id, lease) = match leases.take(queue, receipt) {
            Ok(taken) => taken,
            Err(p) => return Err(self.refused(queue, p).await),
        };
        leases.ended(id, Ended::Released);
        self.inner.release_leases(vec![lease]).await;
        Ok(())
    }

    pub(super) async fn dead_letter_leased(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let inner = &self.inner;
        let (id, lease) = match inner.leases.take(queue, receipt) {
            Ok(taken) => taken,
            Err(p) => return Err(self.refused(queue, p).await),
        };
        let reason = DeadLetterReason::Rejected {
            reason: reason.to_owned(),
        };
        let (dlq, props) = match inner.dead_letter_target(&lease, reason).await {
            Ok(target) => target,
            Err(e) => {
                let _ = lease.channel.release(vec![lease.tag]).await;
                inner.leases.ended(id, Ended::Released);
                return Err(e);
            }
        };
        // The copy and the ack in one transaction: the message is in the DLQ or still
        // here (requeued by the broker if the channel broke), never both.
        match lease
            .channel
            .move_then_ack(&dlq, &lease.payload, props, lease.tag)
            .await
        {
            Ok(()) => {
                inner.leases.ended(id, Ended::DeadLettered);
                Ok(())
            }
            Err(e) => {
                inner.leases.ended(id, Ended::Lost);
                Err(inner.map("dead-letter (tx.commit)", Some(queue), e))
            }
        }
    }
}

impl Inner {
    /// Releases at once the messages of `queue` whose lease ended but which are still held
    /// ([`leases::EXPIRED_HOLD`]): this service is about to receive from the queue.
    #[inline]
    pub(super) async fn release_expired(&self, queue: &QueueName) {
        let due = self.leases.take_expired(queue);
        if !due.is_empty() {
            self.release_leases(due).await;
        }
    }

    /// Hands leased messages back to their queues. A quorum queue counts the delivery and
    /// dead-letters at the limit itself, so a nack is enough for a message it alone counts.
    /// Otherwise (a classic queue counts nothing; a copy we republished carries our count;
    /// a delivery nobody saw must not count) the message is published again with its receive
    /// count in a header (or dead-lettered at `max_receive_count`, read from the queue when
    /// another process created it) and the delivery acked, in one transaction.
    pub(super) async fn release_leases(&self, leases: Vec<Lease>) {
        // The queues this service declares are all of the configured type. The header alone
        // cannot tell: RabbitMQ 3.10 leaves `x-delivery-count` off a quorum queue's first
        // delivery to a consumer (it is on `basic.get`'s), and republishing such a message
        // would start its count, and the broker's delivery limit, from zero again.
        let quorum_queues = self.settings.queue_type == RabbitMqQueueType::Quorum;
        let (nacked, republished): (Vec<_>, Vec<_>) = leases.into_iter().partition(|l| {
            l.seen
                && (quorum_queues || codec::counted_by_broker(&l.properties))
                && !codec::carries_own_count(&l.properties)
        });
        leases::nack_all(nacked).await;
        for lease in republished {
            if !lease.channel.connected() {
                continue;
            }
            let max = self.max_receive_count(&lease.queue).await;
            let target = if lease.seen && max > 0 && lease.receive_count >= max {
                let reason = DeadLetterReason::MaxReceiveCountExceeded {
                    max_receive_count: max,
                };
                match self.dead_letter_target(&lease, reason).await {
                    Ok(target) => target,
                    Err(e) => {
                        tracing::warn!(queue = %lease.queue, error = %e, "dead-lettering at the limit failed; nacking");
                        if let Err(e) = lease.channel.release(vec![lease.tag]).await {
                            tracing::debug!(error = %e, "settling a released lease failed");
                        }
                        continue;
                    }
                }
            } else {
                // A delivery nobody saw is not a receive.
                let counted = lease.receive_count.saturating_sub(u32::from(!lease.seen));
                (
                    lease.queue.as_str().to_owned(),
                    codec::requeue_properties(&lease.properties, counted),
                )
            };
            // The copy and the ack of the original in one transaction: never two live copies.
            let (routing_key, props) = target;
            if let Err(e) = lease
                .channel
                .move_then_ack(&routing_key, &lease.payload, props, lease.tag)
                .await
            {
                tracing::debug!(error = %e, "moving a released lease failed; the broker keeps the original");
            }
        }
    }

    /// Where a leased message goes to be dead-lettered: the queue's DLQ (declared again if it
    /// was deleted meanwhile: a transaction's publish cannot report an unroutable message)
    /// and the properties carrying its dead-letter record.
    async fn dead_letter_target(
        &self,
        lease: &Lease,
        reason: DeadLetterReason,
    ) -> Result<(String, lapin::BasicProperties)> {
        let queue = &lease.queue;
        let dlq = self.dead_letter_queue(queue)?;
        let reason_json = serde_json::to_string(&reason).unwrap_or_default();
        let props = codec::moved_properties(
            &lease.properties,
            [
                (H_DL_SOURCE, long_string(queue.as_str())),
                (H_DL_REASON, long_string(&reason_json)),
                (
                    H_DL_COUNT,
                    AMQPValue::LongLongInt(i64::from(lease.receive_count)),
                ),
                (
                    H_DL_AT,
                    AMQPValue::LongLongInt(Utc::now().timestamp_millis()),
                ),
            ],
        );
        let link = self.link().await?;
        match self.ready_count(&link, &dlq).await {
            Ok(_) => {}
            Err(MessagingError::QueueNotFound { .. }) => {
                let args = self.dead_letter_queue_args(link.broker);
                let ch = link.admin(self.errors()).await?;
                let r = ch.queue_declare(dlq.as_str().into(), durable(), args).await;
                link.give_back(ch);
                r.map_err(|e| self.map("queue.declare", Some(&dlq), e))?;
            }
            Err(e) => return Err(e),
        }
        Ok((dlq.as_str().to_owned(), props))
    }
}
