//! Migration: move a queue's messages from one provider to another, nothing lost.
//!
//! [`migrate_queue`] repeats, until the source has nothing receivable: lease a batch from the
//! source, send it to the target with message ids, correlation ids and payloads preserved, and
//! only then delete the batch from the source. This is at-least-once: a crash or error between
//! the send and the delete leaves the messages in both (the source copies come back when their
//! lease ends, and a re-run moves them again under the same ids); it never leaves them in
//! neither. When a send fails the batch's leases are released at once so a re-run finds them.
//!
//! Not carried over: receive counts (reset), dead-letter history, remaining delays (only
//! receivable messages move; delayed and in-flight ones are counted in
//! [`MigrationReport::left_in_source`]). Dead-letter queues are queues too: migrate them by name.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::error::Result;
use crate::queue_name::QueueName;
use crate::service::MessagingService;

/// How to migrate.
#[derive(Clone, Debug)]
pub struct MigrationOptions {
    /// Messages per receive / send / delete round trip (capped by both providers' limits).
    pub batch_size: usize,
    /// Lease taken on source messages while they are copied; must exceed one batch's send time.
    pub visibility_timeout: Duration,
    /// Create the queue on the target first (idempotent).
    pub create_target_queue: bool,
    /// Stop after this many messages.
    pub max_messages: Option<u64>,
    /// The queue name on the target (default: the same name).
    pub target_queue: Option<QueueName>,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            batch_size: 100,
            visibility_timeout: Duration::from_secs(60),
            create_target_queue: true,
            max_messages: None,
            target_queue: None,
        }
    }
}

/// Progress after each batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MigrationProgress {
    pub moved: u64,
    pub batches: u64,
    /// Messages receivable in the source when the migration started.
    pub initial_estimate: Option<u64>,
}

/// What a migration did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MigrationReport {
    pub queue: QueueName,
    pub target_queue: QueueName,
    /// Messages sent to the target and deleted from the source.
    pub moved: u64,
    pub batches: u64,
    /// Messages sent to the target whose source delete was refused (their lease had ended and
    /// someone else received them): they may exist twice, with the same message id.
    pub possible_duplicates: u64,
    /// Messages still in the source (in flight, delayed) when it had nothing receivable left.
    pub left_in_source: Option<u64>,
    pub elapsed_ms: u64,
}

/// Moves `queue`'s receivable messages from `from` to `to`, in batches, ids preserved.
/// `progress` is called after every batch.
pub async fn migrate_queue(
    from: &dyn MessagingService,
    to: &dyn MessagingService,
    queue: &QueueName,
    options: &MigrationOptions,
    mut progress: impl FnMut(&MigrationProgress) + Send,
) -> Result<MigrationReport> {
    let start = Instant::now();
    let target_queue = options
        .target_queue
        .clone()
        .unwrap_or_else(|| queue.clone());
    let initial_estimate = from
        .get_queue_stats(queue)
        .await
        .ok()
        .map(|s| s.message_count);
    if options.create_target_queue {
        to.create_queue(&target_queue).await?;
    }
    let batch_size = options
        .batch_size
        .max(1)
        .min(from.capabilities().max_batch_size.max(1))
        .min(to.capabilities().max_batch_size.max(1));
    let mut state = MigrationProgress {
        moved: 0,
        batches: 0,
        initial_estimate,
    };
    let mut possible_duplicates = 0;
    loop {
        let want = match options.max_messages {
            Some(max) if state.moved >= max => break,
            Some(max) => batch_size.min((max - state.moved) as usize),
            None => batch_size,
        };
        let batch = from
            .receive(queue, want, options.visibility_timeout)
            .await?;
        if batch.is_empty() {
            break;
        }
        let outgoing = batch.iter().map(|m| m.to_outgoing()).collect();
        if let Err(e) = to.send_batch(&target_queue, outgoing).await {
            // Hand the batch back now rather than after the lease: a re-run picks it up.
            for m in &batch {
                let _ = from
                    .change_message_visibility(queue, m.receipt(), Duration::ZERO)
                    .await;
            }
            return Err(e);
        }
        let receipts: Vec<_> = batch.iter().map(|m| m.receipt().clone()).collect();
        let outcome = from.delete_messages(queue, &receipts).await?;
        possible_duplicates += outcome.rejected.len() as u64;
        state.moved += batch.len() as u64;
        state.batches += 1;
        progress(&state);
    }
    let left_in_source = from.get_queue_stats(queue).await.ok().map(|s| s.total());
    let report = MigrationReport {
        queue: queue.clone(),
        target_queue,
        moved: state.moved,
        batches: state.batches,
        possible_duplicates,
        left_in_source,
        elapsed_ms: start.elapsed().as_millis() as u64,
    };
    tracing::info!(
        queue = %report.queue,
        from = %from.provider(),
        to = %to.provider(),
        moved = report.moved,
        "queue migrated"
    );
    Ok(report)
}
