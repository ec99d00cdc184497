//! Retry with exponential backoff and jitter, for operations safe to repeat.
//!
//! The delays come from `backon`'s exponential builder configured by [`RetryPolicy`]:
//! `initial_backoff_ms`, multiplied by `backoff_multiplier` each retry, capped at
//! `max_backoff_ms`, at most `max_retries` retries. With `jitter` (default on) each delay gets a
//! random extra of 0-100% of itself, so clients that failed together do not retry together.
//!
//! Only errors with [`MessagingError::is_backend_failure`](crate::MessagingError::is_backend_failure) are retried: permanent errors cannot
//! succeed on repeat, and [`MessagingError::CircuitOpen`](crate::MessagingError::CircuitOpen) / [`MessagingError::Backpressure`](crate::MessagingError::Backpressure)
//! mean "stop calling". Placed outside a [`super::CircuitBreakerLayer`], the retry loop ends
//! the moment the breaker opens (it asks [`Next::ready`] before each sleep), so retries never
//! pile onto an open circuit.
//!
//! Which operations are repeated: see [`is_idempotent`]. Sends are retried when
//! `retry_policy.retry_sends` is true (the default): the message id is fixed before the first
//! attempt, so if an attempt reached the backend but its answer was lost, the repeat is a
//! duplicate *with the same message id*, which consumers already handle under at-least-once
//! delivery. Set it to false when duplicates are worse than surfacing the error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::layer::{Layer, LayerFuture, Next, Request};
use super::layered::Layered;
use super::Op;
use crate::config::RetryPolicy;
use crate::service::MessagingService;

/// Whether repeating `op` after an unknown outcome is harmless under the contract.
///
/// Receive (an unanswered receive only leases messages that come back when the lease ends),
/// stats, health, initialize and create_queue (idempotent), delete and change_visibility
/// (idempotent for the receipt's own lease) are, and so are the extension calls that only
/// read, lease or declare (PGMQ read/metrics/create, AMQP declare/bind/qos/consume).
/// Dead-lettering, redrive, purge, delete_queue and PGMQ archive are not: a repeat after
/// success reports a different result (a stale receipt, a wrong count, a missing queue).
/// Sends (and AMQP publishes) are decided by `retry_sends`.
pub fn is_idempotent(op: Op) -> bool {
    matches!(
        op,
        Op::Initialize
            | Op::HealthCheck
            | Op::CreateQueue
            | Op::Receive
            | Op::DeleteMessage
            | Op::DeleteMessages
            | Op::ChangeVisibility
            | Op::Stats
            | Op::PgmqCreateQueueWithVt
            | Op::PgmqReadBatch
            | Op::PgmqMetrics
            | Op::AmqpDeclareExchange
            | Op::AmqpBindQueue
            | Op::AmqpSetQos
            | Op::AmqpConsumerStream
    )
}

/// Retries operations safe to repeat on the service below it.
pub struct RetryLayer {
    policy: RetryPolicy,
    retries: AtomicU64,
}

impl RetryLayer {
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer {
            policy,
            retries: AtomicU64::new(0),
        }
    }

    /// Retries made since creation (not counting first attempts).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The delays the policy gives, in order (one per retry).
    pub fn backoff(policy: &RetryPolicy) -> impl Iterator<Item = Duration> {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(policy.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(policy.max_backoff_ms))
            .with_factor(policy.backoff_multiplier as f32)
            .with_max_times(policy.max_retries as usize);
        if policy.jitter {
            builder = builder.with_jitter();
        }
        builder.build()
    }

    fn retries_op(&self, op: Op) -> bool {
        is_idempotent(op)
            || (self.policy.retry_sends && matches!(op, Op::Send | Op::SendBatch | Op::AmqpPublish))
    }
}

impl Layer for RetryLayer {
    fn call(&self, request: Request<'_>, next: Next<'_>) -> impl LayerFuture {
        async move {
            let op = request.op();
            if !self.retries_op(op) {
                return next.run(request).await;
            }
            let mut delays = Self::backoff(&self.policy);
            loop {
                let error = match next.run(request.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                };
                if !error.is_backend_failure() {
                    return Err(error);
                }
                // A breaker below that opened (on these attempts or other callers') ends the
                // loop now rather than after a sleep.
                next.ready()?;
                let Some(delay) = delays.next() else {
                    return Err(error);
                };
                tracing::debug!(%op, ?delay, %error, "retrying after a transient failure");
                self.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A service with a [`RetryLayer`] on top.
pub type RetryService = Layered<RetryLayer>;

impl RetryService {
    pub fn new(inner: Arc<dyn MessagingService>, policy: RetryPolicy) -> Self {
        Layered::wrap(inner, RetryLayer::new(policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CircuitBreakerConfig;
    use crate::error::MessagingError;
    use crate::message::OutgoingMessage;
    use crate::providers::in_memory::InMemoryMessageService;
    use crate::queue_name::QueueName;
    use crate::resilience::fault::{FaultControl, FaultInjectingService};
    use crate::resilience::{CircuitBreaker, CircuitBreakerLayer, ServiceStack};
    use tokio::time::Instant;

    fn policy(max_retries: u32, jitter: bool) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            backoff_multiplier: 2.0,
            jitter,
            retry_sends: true,
        }
    }

    /// backon scales delays in f32, and the timer rounds each sleep up to the next
    /// millisecond: allow one millisecond per sleep.
    fn assert_ms(elapsed: Duration, expected_ms: u64) {
        let ms = elapsed.as_millis() as u64;
        assert!(
            (expected_ms..=expected_ms + 3).contains(&ms),
            "{ms} ms, expected {expected_ms}"
        );
    }

    async fn faulty(name: &str) -> (Arc<dyn MessagingService>, Arc<FaultControl>, QueueName) {
        let mem: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let queue = QueueName::new(name).unwrap();
        mem.create_queue(&queue).await.unwrap();
        mem.send(&queue, OutgoingMessage::new("m")).await.unwrap();
        let fault = FaultInjectingService::new(mem);
        let control = fault.control();
        (Arc::new(fault), control, queue)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_with_exponential_backoff() {
        let (inner, control, queue) = faulty("retry_backoff").await;
        let svc = RetryService::new(inner, policy(3, false));
        control.fail_next(3);
        let start = Instant::now();
        let got = svc
            .receive(&queue, 10, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(control.calls(), 4);
        assert_ms(start.elapsed(), 100 + 200 + 400);

        control.fail_next(4);
        let err = svc
            .receive(&queue, 10, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::Connection { .. }));
        assert_eq!(control.calls(), 4 + 4, "one attempt plus max_retries");
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_one_extra_delay_and_varies() {
        let p = RetryPolicy {
            max_retries: 50,
            max_backoff_ms: 100,
            ..policy(50, true)
        };
        let delays: Vec<_> = RetryLayer::backoff(&p).collect();
        assert_eq!(delays.len(), 50);
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(100) && *d < Duration::from_millis(200)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 10, "jitter must spread delays");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_and_unsafe_operations_are_not_retried() {
        let (inner, control, queue) = faulty("retry_permanent").await;
        let svc = RetryService::new(inner, policy(5, false));
        let missing = QueueName::new("retry_missing").unwrap();
        svc.receive(&missing, 1, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(control.calls(), 1);

        control.fail_next(1);
        svc.purge_queue(&queue).await.unwrap_err();
        assert_eq!(control.calls(), 2, "purge is not idempotent: no retry");

        let no_send_retry = RetryService::new(
            svc.inner().clone(),
            RetryPolicy {
                retry_sends: false,
                ..policy(5, false)
            },
        );
        control.fail_next(1);
        no_send_retry
            .send(&queue, OutgoingMessage::new("x"))
            .await
            .unwrap_err();
        assert_eq!(control.calls(), 3);
        control.fail_next(1);
        svc.send(&queue, OutgoingMessage::new("x")).await.unwrap();
        assert_eq!(control.calls(), 5, "sends retried when retry_sends");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_when_the_breaker_opens() {
        let (inner, control, queue) = faulty("retry_breaker").await;
        let breaker = Arc::new(CircuitBreaker::new(
            "retry_breaker",
            CircuitBreakerConfig {
                failure_threshold: 3,
                success_threshold: 1,
                timeout_ms: 60_000,
                half_open_max_calls: 1,
            },
        ));
        // No wiring between the two: retry learns the breaker opened from `Next::ready`.
        let svc = ServiceStack::new(inner)
            .layer(CircuitBreakerLayer::new(breaker.clone()))
            .layer(RetryLayer::new(policy(10, false)))
            .build();
        control.fail_always();
        let start = Instant::now();
        let err = svc
            .receive(&queue, 1, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::CircuitOpen { .. }), "{err}");
        assert_eq!(control.calls(), 3, "no call after the breaker opened");
        assert_ms(start.elapsed(), 100 + 200);

        // Another caller while open: fails at once, no sleeping, no backend call.
        let start = Instant::now();
        let err = svc
            .receive(&queue, 1, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, MessagingError::CircuitOpen { .. }));
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(control.calls(), 3);
    }
}
