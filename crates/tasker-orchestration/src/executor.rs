//! One batch of work through `MessagingService`: the plan's `process_with_messaging`.
//!
//! Receive a batch, run the handler on each message concurrently, then: acknowledge the
//! successes in one batched delete; give a retryable failure its lease back after a backoff
//! (`change_message_visibility`), so it is retried later; dead-letter a permanent failure, or a
//! retryable one that has used its attempts, after telling the handler so it can record the
//! outcome. Undecodable messages never reach the handler: the typed receive dead-letters them.
//!
//! Outages are not failures of the work: a handler that finds its infrastructure unavailable
//! says so ([`HandlerError::Unavailable`]) and is run again with backoff while the lease lasts;
//! the settling calls ride through the same way. No attempt is counted and nothing is
//! dead-lettered for an outage; a lease that runs out (or dies with its connection) just
//! brings the message back.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::join_all;
use tasker_messaging::{
    MessagingError, MessagingService, MessagingServiceExt, QueueMessage, QueueName, QueuedMessage,
    RetryPolicy,
};
use tokio::time::Instant;

use crate::resilient::{RideThrough, Transient};

pub use tasker_messaging::ExecutorType;

/// How a handler's work on one message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Done: acknowledge.
    Done,
    /// Nothing to do (a duplicate delivery of finished work): acknowledge.
    Skipped,
}

/// Why a handler could not finish a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// The work failed but may succeed later: the message comes back after a backoff, and is
    /// dead-lettered once its deliveries (the provider's receive count) reach `max_attempts`.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Attempt `attempt` of the work failed, counted by the handler itself where its state
    /// lives (so redeliveries caused by outages do not use attempts up): the message comes back
    /// after the backoff of that attempt, and is dead-lettered once `attempt` reaches
    /// `max_attempts`.
    #[error("retryable (attempt {attempt}): {reason}")]
    RetryableAttempt { attempt: u32, reason: String },
    /// Will never succeed: dead-letter the message.
    #[error("permanent: {0}")]
    Permanent(String),
    /// Infrastructure the handler needs (its store, the broker) is unavailable: no attempt was
    /// made. The executor keeps the lease and runs the handler again with backoff while the
    /// lease lasts; after that the message simply comes back. Never dead-lettered for this.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// The work an executor does per message.
#[async_trait]
pub trait MessageHandler<T: Sync>: Send + Sync + 'static {
    async fn handle(&self, message: &QueuedMessage<T>) -> Result<Handled, HandlerError>;

    /// Called before a message is dead-lettered (permanent error, or retries exhausted), so
    /// the handler can record the failure where the state lives.
    async fn dead_lettering(&self, message: &QueuedMessage<T>, reason: &str) {
        let _ = (message, reason);
    }
}

/// Per-executor settings.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    pub batch_size: usize,
    pub visibility_timeout: Duration,
    /// Attempts before a retryable failure is dead-lettered. Keep it below the queue's
    /// `max_receive_count`, so the handler hears about the failure before the provider moves
    /// the message on its own.
    pub max_attempts: u32,
    /// Backoff between attempts of a retryable failure.
    pub retry: RetryPolicy,
    /// How unavailable infrastructure is waited out (backoff, fault counters).
    pub ride: RideThrough,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            batch_size: 10,
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 3,
            retry: RetryPolicy::default(),
            ride: RideThrough::default(),
        }
    }
}

impl ExecutorConfig {
    /// The delay before attempt `attempt + 1`, after `attempt` failed deliveries (1-based):
    /// exponential with jitter, bounded by the policy.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let policy = &self.retry;
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(policy.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(policy.max_backoff_ms))
            .with_factor(policy.backoff_multiplier as f32)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(Duration::from_millis(policy.max_backoff_ms))
    }

    /// Until when a lease taken now is worked on (retries of unavailable infrastructure stop
    /// there, leaving a margin before the provider hands the message to someone else).
    fn lease_deadline(&self) -> Instant {
        Instant::now() + self.visibility_timeout.mul_f64(0.8)
    }
}

/// What one batch did (the plan's `ProcessBatchResult`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessBatchResult {
    /// Messages received in this batch.
    pub received: usize,
    pub items_processed: usize,
    /// Permanent failures and exhausted retries: dead-lettered.
    pub items_failed: usize,
    pub items_skipped: usize,
    /// Retryable failures given back for a later attempt.
    pub items_retried: usize,
    /// Messages left to come back by themselves: their infrastructure stayed unavailable for
    /// the whole lease, or the lease was lost with a connection (no attempt counted).
    pub items_deferred: usize,
}

impl ProcessBatchResult {
    pub fn merge(&mut self, other: ProcessBatchResult) {
        self.received += other.received;
        self.items_processed += other.items_processed;
        self.items_failed += other.items_failed;
        self.items_skipped += other.items_skipped;
        self.items_retried += other.items_retried;
        self.items_deferred += other.items_deferred;
    }
}

/// The receipts a worker holds right now, so a pool that must stop a worker before its batch
/// ends can give the leases back instead of leaving the messages invisible.
#[derive(Debug, Default)]
pub struct LeaseTracker(parking_lot::Mutex<Vec<tasker_messaging::ReceiptHandle>>);

impl LeaseTracker {
    /// Takes the receipts still held.
    pub fn take(&self) -> Vec<tasker_messaging::ReceiptHandle> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// Receives one batch from `queue` and processes it with `handler`.
pub async fn process_with_messaging<T: QueueMessage + 'static>(
    messaging: &Arc<dyn MessagingService>,
    queue: &QueueName,
    handler: &dyn MessageHandler<T>,
    config: &ExecutorConfig,
) -> Result<ProcessBatchResult, MessagingError> {
    process_tracked(messaging, queue, handler, config, config.batch_size, None).await
}

/// "The infrastructure is unavailable", as the ride-through loop classifies it.
struct Unavailable(String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Transient for Unavailable {
    fn is_transient(&self) -> bool {
        true
    }
}

/// Runs the handler, again with backoff while it reports unavailable infrastructure and the
/// lease lasts; `None` when the lease ran out first.
async fn handle_riding<T: Sync + Send + 'static>(
    handler: &dyn MessageHandler<T>,
    message: &QueuedMessage<T>,
    config: &ExecutorConfig,
    deadline: Instant,
) -> Option<Result<Handled, HandlerError>> {
    let outcome = config
        .ride
        .run("handler", Some(deadline), || async {
            match handler.handle(message).await {
                Err(HandlerError::Unavailable(why)) => Err(Unavailable(why)),
                other => Ok(other),
            }
        })
        .await;
    outcome.ok()
}

/// Runs a settling call (ack, retry later, dead-letter) through outages while the lease lasts.
/// `Ok(false)`: the lease is gone (lost with its connection, or expired while the backend was
/// down): the message comes back by itself. Permanent errors are returned.
async fn settle<F, Fut>(
    config: &ExecutorConfig,
    what: &'static str,
    deadline: Instant,
    op: F,
) -> Result<bool, MessagingError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), MessagingError>>,
{
    match config.ride.run(what, Some(deadline), op).await {
        Ok(()) => Ok(true),
        Err(MessagingError::InvalidReceipt { .. }) => Ok(false),
        Err(e) if e.is_retryable() => Ok(false),
        Err(e) => Err(e),
    }
}

/// `process_with_messaging` with a batch size chosen by the caller (backpressure shrinks it)
/// and the held receipts recorded in `leases` until each is settled.
pub async fn process_tracked<T: QueueMessage + 'static>(
    messaging: &Arc<dyn MessagingService>,
    queue: &QueueName,
    handler: &dyn MessageHandler<T>,
    config: &ExecutorConfig,
    batch_size: usize,
    leases: Option<&LeaseTracker>,
) -> Result<ProcessBatchResult, MessagingError> {
    let messages = messaging
        .receive_messages::<T>(queue, batch_size.max(1), config.visibility_timeout)
        .await?;
    let deadline = config.lease_deadline();
    let mut result = ProcessBatchResult {
        received: messages.len(),
        ..Default::default()
    };
    if messages.is_empty() {
        return Ok(result);
    }
    if let Some(leases) = leases {
        leases
            .0
            .lock()
            .extend(messages.iter().map(|m| m.receipt().clone()));
    }
    let outcomes = join_all(
        messages
            .iter()
            .map(|m| handle_riding(handler, m, config, deadline)),
    )
    .await;
    let mut acks = Vec::with_capacity(messages.len());
    for (message, outcome) in messages.iter().zip(outcomes) {
        let receipt = message.receipt();
        let deliveries = message.metadata.receive_count;
        let retry_at = match &outcome {
            Some(Err(HandlerError::Retryable(_))) => Some(deliveries),
            Some(Err(HandlerError::RetryableAttempt { attempt, .. })) => Some(*attempt),
            _ => None,
        };
        match outcome {
            None => result.items_deferred += 1,
            Some(Ok(Handled::Done)) => {
                acks.push(receipt.clone());
                result.items_processed += 1;
            }
            Some(Ok(Handled::Skipped)) => {
                acks.push(receipt.clone());
                result.items_skipped += 1;
            }
            Some(Err(HandlerError::Retryable(why)))
            | Some(Err(HandlerError::RetryableAttempt { reason: why, .. }))
                if retry_at.unwrap_or(0) < config.max_attempts =>
            {
                let attempts = retry_at.unwrap_or(0);
                let delay = config.retry_delay(attempts);
                tracing::debug!(queue = %queue, attempts, ?delay, %why, "retrying later");
                let given_back = settle(config, "retry later", deadline, || {
                    messaging.change_message_visibility(queue, receipt, delay)
                })
                .await?;
                if given_back {
                    result.items_retried += 1;
                } else {
                    result.items_deferred += 1;
                }
            }
            Some(Err(error)) => {
                let reason = match &error {
                    HandlerError::Permanent(why) => format!("permanent failure: {why}"),
                    HandlerError::Retryable(why)
                    | HandlerError::RetryableAttempt { reason: why, .. } => {
                        let attempts = retry_at.unwrap_or(deliveries);
                        format!("gave up after {attempts} attempts: {why}")
                    }
                    HandlerError::Unavailable(why) => format!("unavailable: {why}"),
                };
                handler.dead_lettering(message, &reason).await;
                let moved = settle(config, "dead-letter", deadline, || {
                    messaging.dead_letter_message(queue, receipt, &reason)
                })
                .await?;
                if moved {
                    result.items_failed += 1;
                } else {
                    result.items_deferred += 1;
                }
            }
        }
    }
    if !acks.is_empty() {
        let outcome = config
            .ride
            .run("ack", Some(deadline), || {
                messaging.delete_messages(queue, &acks)
            })
            .await;
        match outcome {
            Ok(outcome) if !outcome.rejected.is_empty() => {
                // Leases lost with their connection or run out: the messages come back and are
                // skipped as done (the work is idempotent). Not a warning per message: after a
                // broker restart every lease held is refused.
                tracing::debug!(queue = %queue, refused = outcome.rejected.len(), "acks refused");
                result.items_deferred += outcome.rejected.len();
            }
            Ok(_) => {}
            Err(e) if e.is_retryable() => result.items_deferred += acks.len(),
            Err(e) => return Err(e),
        }
    }
    if let Some(leases) = leases {
        // Every lease of the batch is settled: acked, given back, dead-lettered, or left to
        // come back by itself.
        leases.0.lock().clear();
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use tasker_messaging::{InMemoryMessageService, MessagingService, StepMessage};

    struct Scripted {
        /// Per call: what to return.
        script: Mutex<Vec<Result<Handled, HandlerError>>>,
        dead: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl MessageHandler<StepMessage> for Scripted {
        async fn handle(&self, _m: &QueuedMessage<StepMessage>) -> Result<Handled, HandlerError> {
            self.script.lock().remove(0)
        }
        async fn dead_lettering(&self, _m: &QueuedMessage<StepMessage>, reason: &str) {
            self.dead.lock().push(reason.to_owned());
        }
    }

    fn config() -> ExecutorConfig {
        ExecutorConfig {
            batch_size: 10,
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 2,
            retry: RetryPolicy {
                max_retries: 3,
                initial_backoff_ms: 1_000,
                max_backoff_ms: 4_000,
                backoff_multiplier: 2.0,
                ..RetryPolicy::default()
            },
            ride: RideThrough::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_then_give_up_then_dead_letter() {
        let messaging: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let q = QueueName::new("exec_test").unwrap();
        messaging.create_queue(&q).await.unwrap();
        messaging
            .send_message(&q, &StepMessage::random())
            .await
            .unwrap();
        let handler = Scripted {
            script: Mutex::new(vec![
                Err(HandlerError::Retryable("db busy".into())),
                Err(HandlerError::Retryable("db busy".into())),
            ]),
            dead: Mutex::new(Vec::new()),
        };
        let cfg = config();
        let first = process_with_messaging(&messaging, &q, &handler, &cfg)
            .await
            .unwrap();
        assert_eq!(first.items_retried, 1);
        // Hidden during the backoff (at least the initial 1 s, jitter only adds).
        tokio::time::advance(Duration::from_millis(900)).await;
        let hidden = process_with_messaging(&messaging, &q, &handler, &cfg)
            .await
            .unwrap();
        assert_eq!(hidden.received, 0);
        tokio::time::advance(Duration::from_secs(5)).await;
        let second = process_with_messaging(&messaging, &q, &handler, &cfg)
            .await
            .unwrap();
        assert_eq!(second.items_failed, 1, "{second:?}");
        assert!(handler.dead.lock()[0].contains("gave up after 2 attempts"));
        let dlq = messaging.dead_letter_queue_name(&q).unwrap();
        let stats = messaging.get_queue_stats(&q).await.unwrap();
        assert_eq!(stats.total(), 0);
        assert_eq!(stats.dead_letter_count, Some(1));
        let dead = messaging
            .receive(&dlq, 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
    }

    #[tokio::test]
    async fn successes_and_skips_are_acked_permanent_failures_dead_lettered() {
        let messaging: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let q = QueueName::new("exec_mixed").unwrap();
        messaging.create_queue(&q).await.unwrap();
        let steps = vec![StepMessage::random(); 3];
        messaging.send_messages(&q, &steps).await.unwrap();
        let handler = Scripted {
            script: Mutex::new(vec![
                Ok(Handled::Done),
                Ok(Handled::Skipped),
                Err(HandlerError::Permanent("card declined".into())),
            ]),
            dead: Mutex::new(Vec::new()),
        };
        let r = process_with_messaging(&messaging, &q, &handler, &config())
            .await
            .unwrap();
        assert_eq!(
            r,
            ProcessBatchResult {
                received: 3,
                items_processed: 1,
                items_failed: 1,
                items_skipped: 1,
                items_retried: 0,
                items_deferred: 0
            }
        );
        let stats = messaging.get_queue_stats(&q).await.unwrap();
        assert_eq!((stats.total(), stats.dead_letter_count), (0, Some(1)));
    }

    #[test]
    fn retry_delays_grow_and_stay_bounded() {
        let cfg = config();
        let d1 = cfg.retry_delay(1);
        let d3 = cfg.retry_delay(3);
        assert!(
            d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
            "{d1:?}"
        );
        assert!(d3 >= Duration::from_secs(4), "{d3:?}");
        assert!(
            cfg.retry_delay(50) <= Duration::from_secs(8),
            "jitter stays within 2x max"
        );
    }
}
