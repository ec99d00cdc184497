//! Receipts: (queue tag + local sequence, lease generation), checked against the queue's
//! lease table in this process (fencing: a receipt whose message was leased again since is
//! refused). Acks mark records done and store the partition's new commit point; dead-letter
//! and redrive copy a record to another topic (confirmed) and then ack it where it was, so a
//! crash between the two leaves a duplicate, never a gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;

use super::codec::{self, Extra};
use super::connection::QueueHandle;
use super::errors;
use super::leases::Moved;
use super::send::Record;
use super::KafkaMessageService;
use crate::error::{MessagingError, Result};
use crate::message::{DeadLetterInfo, DeadLetterReason, ReceiptHandle};
use crate::queue_name::QueueName;
use crate::service::DeleteOutcome;

fn gone(queue: &QueueName) -> MessagingError {
    MessagingError::invalid_receipt(queue.as_str(), "the message no longer exists")
}

impl KafkaMessageService {
    /// The queue's open table, for a receipt: a queue this process never received from
    /// cannot have issued it (`InvalidReceipt`), a queue that does not exist is
    /// `QueueNotFound`.
    async fn leased_handle(&self, queue: &QueueName) -> Result<Option<Arc<QueueHandle>>> {
        self.check_open()?;
        let handle = self.shared.handles.lock().get(queue).cloned();
        match handle {
            Some(h) => Ok(Some(h)),
            None => {
                self.info(queue).await?;
                Ok(None)
            }
        }
    }

    pub(super) async fn delete_leased(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let mut outcome = DeleteOutcome::default();
        let Some(handle) = self.leased_handle(queue).await? else {
            outcome.rejected = receipts
                .iter()
                .map(|r| {
                    (
                        r.clone(),
                        errors::refused(queue, super::leases::Refused::NotThisQueue),
                    )
                })
                .collect();
            return Ok(outcome);
        };
        let mut points: HashMap<i32, i64> = HashMap::new();
        {
            let mut leases = handle.leases.lock();
            for r in receipts {
                match leases.ack(r) {
                    Ok(point) => {
                        outcome.deleted += 1;
                        if let Some((p, o)) = point {
                            let e = points.entry(p).or_insert(o);
                            *e = (*e).max(o);
                        }
                    }
                    Err(why) => outcome
                        .rejected
                        .push((r.clone(), errors::refused(queue, why))),
                }
            }
        }
        let points: Vec<(i32, i64)> = points.into_iter().collect();
        handle.store(queue.as_str(), &points);
        Ok(outcome)
    }

    pub(super) async fn set_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        let Some(handle) = self.leased_handle(queue).await? else {
            return Err(errors::refused(queue, super::leases::Refused::NotThisQueue));
        };
        let until = (!visibility_timeout.is_zero()).then(|| Instant::now() + visibility_timeout);
        let held = handle
            .leases
            .lock()
            .set_visibility(receipt, until)
            .map_err(|why| errors::refused(queue, why))?;
        if !held {
            return Err(gone(queue));
        }
        if until.is_none() {
            handle.ready.notify_waiters();
        }
        Ok(())
    }

    pub(super) async fn dead_letter_leased(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let Some(handle) = self.leased_handle(queue).await? else {
            return Err(errors::refused(queue, super::leases::Refused::NotThisQueue));
        };
        if handle.info.dead_letter.is_none() {
            return Err(MessagingError::Unsupported {
                provider: crate::service::ProviderKind::Kafka,
                capability: crate::service::Capability::DeadLetterQueues,
            });
        }
        let moving = handle
            .leases
            .lock()
            .start_move(receipt)
            .map_err(|why| errors::refused(queue, why))?;
        let Some(moving) = moving else {
            return Err(gone(queue));
        };
        let failed = self
            .move_to_dead_letter(
                &handle,
                vec![moving],
                DeadLetterReason::Rejected {
                    reason: reason.to_owned(),
                },
            )
            .await;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Copies records to the queue's dead-letter topic with why, then marks them done here;
    /// a copy that failed puts its record back (ready) and is returned.
    pub(super) async fn move_to_dead_letter(
        &self,
        handle: &QueueHandle,
        moving: Vec<(u64, Moved)>,
        reason: DeadLetterReason,
    ) -> Option<MessagingError> {
        let Some(dlq) = handle.info.dead_letter.clone() else {
            let mut leases = handle.leases.lock();
            for (seq, _) in moving {
                leases.end_move(seq, false, false);
            }
            return None;
        };
        let now = Utc::now();
        let records: Vec<Record> = moving
            .iter()
            .map(|(_, m)| {
                let info = DeadLetterInfo {
                    source_queue: handle.name.clone(),
                    reason: reason.clone(),
                    receive_count: m.receive_count,
                    dead_lettered_at: now,
                    original_enqueued_at: m.enqueued_at,
                };
                Record {
                    id: m.message_id,
                    payload: m.payload.clone(),
                    headers: codec::headers(&Extra {
                        correlation_id: m.correlation_id,
                        enqueued_at: Some(m.enqueued_at),
                        dead_letter: Some(&info),
                        ..Extra::default()
                    }),
                }
            })
            .collect();
        let results = self.produce(&dlq, records).await;
        self.end_moves(handle, &moving, results, true)
    }

    /// Redrive: copies dead letters back to their queue (ids kept, count reset), then marks
    /// them done in the dead-letter topic. Returns how many moved.
    pub(super) async fn copy_back(
        &self,
        queue: &QueueName,
        dlq: &QueueHandle,
        moving: Vec<(u64, Moved)>,
    ) -> Result<u64> {
        let records: Vec<Record> = moving
            .iter()
            .map(|(_, m)| Record {
                id: m.message_id,
                payload: m.payload.clone(),
                headers: codec::headers(&Extra {
                    correlation_id: m.correlation_id,
                    enqueued_at: Some(m.enqueued_at),
                    ..Extra::default()
                }),
            })
            .collect();
        let results = self.produce(queue, records).await;
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        match self.end_moves(dlq, &moving, results, false) {
            Some(e) if ok == 0 => Err(e),
            _ => Ok(ok),
        }
    }

    fn end_moves(
        &self,
        handle: &QueueHandle,
        moving: &[(u64, Moved)],
        results: Vec<Result<()>>,
        dead_lettered: bool,
    ) -> Option<MessagingError> {
        let mut first_error = None;
        let mut points: HashMap<i32, i64> = HashMap::new();
        {
            let mut leases = handle.leases.lock();
            for ((seq, _), result) in moving.iter().zip(results) {
                let copied = result.is_ok();
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
                if let Some((p, o)) = leases.end_move(*seq, copied, dead_lettered) {
                    let e = points.entry(p).or_insert(o);
                    *e = (*e).max(o);
                }
            }
        }
        let points: Vec<(i32, i64)> = points.into_iter().collect();
        handle.store(handle.name.as_str(), &points);
        if first_error.is_some() {
            handle.ready.notify_waiters();
        }
        first_error
    }
}
