//! The circuit breaker as a layer: every guarded call (all but waits and shutdown, extension
//! calls included) takes a permit before the call below is even built (so a refused call costs
//! only the refusal) and reports its outcome, and so does each item of a native consumer
//! stream.
//!
//! A native stream takes a permit before it pulls from the provider and reports the item's
//! outcome. While the breaker is open the stream does not pull: it yields
//! [`MessagingError::CircuitOpen`] (retryable), then pauses until the breaker would admit a
//! probe (at least `max_idle_backoff`), as the stream contract says for retryable errors. A
//! consumer stream without a native one receives through the stack, so each of its receives
//! fails fast the same way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::Stream;

use super::circuit_breaker::{CallPermit, CircuitBreaker, CircuitState};
use super::layer::{Layer, LayerFuture, Next, Request, StreamInfo};
use super::layered::Layered;
use crate::error::{MessagingError, Result};
use crate::message::ReceivedMessage;
use crate::service::{MessageStream, MessagingService};

/// Guards the service below with one breaker (share the `Arc` to read its state elsewhere).
pub struct CircuitBreakerLayer {
    breaker: Arc<CircuitBreaker>,
}

impl CircuitBreakerLayer {
    pub fn new(breaker: Arc<CircuitBreaker>) -> Self {
        CircuitBreakerLayer { breaker }
    }

    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }
}

impl Layer for CircuitBreakerLayer {
    fn call(&self, request: Request<'_>, next: Next<'_>) -> impl LayerFuture {
        // Decided before anything below is built: a refused call costs only the refusal.
        let admitted = request
            .op()
            .is_guarded()
            .then(|| self.breaker.try_acquire());
        async move {
            let permit = match admitted {
                None => return next.run(request).await,
                Some(admitted) => admitted?,
            };
            let result = next.run(request).await;
            match &result {
                Ok(_) => permit.success(),
                Err(e) if e.is_backend_failure() => permit.failure(),
                // Permanent errors prove the backend answered but say nothing of its health.
                Err(_) => drop(permit),
            }
            result
        }
    }

    fn stream(&self, info: &StreamInfo<'_>, stream: MessageStream) -> MessageStream {
        Box::pin(GuardedStream {
            breaker: self.breaker.clone(),
            inner: stream,
            permit: None,
            pause: None,
            min_pause: info.options.max_idle_backoff,
        })
    }

    fn ready(&self, next: Next<'_>) -> Result<()> {
        if self.breaker.state() == CircuitState::Open {
            return Err(MessagingError::CircuitOpen {
                name: self.breaker.name().to_owned(),
            });
        }
        next.ready()
    }
}

/// A native consumer stream behind a breaker.
struct GuardedStream {
    breaker: Arc<CircuitBreaker>,
    inner: MessageStream,
    /// Held while the inner stream is being polled for one item.
    permit: Option<CallPermit<Arc<CircuitBreaker>>>,
    /// Set after yielding `CircuitOpen`: no pull before it ends.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    min_pause: Duration,
}

impl Stream for GuardedStream {
    type Item = Result<ReceivedMessage>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(pause) = &mut this.pause {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        if this.permit.is_none() {
            match this.breaker.try_acquire_owned() {
                Ok(permit) => this.permit = Some(permit),
                Err(open) => {
                    let wait = this.breaker.open_for().max(this.min_pause);
                    this.pause = Some(Box::pin(tokio::time::sleep(wait)));
                    return Poll::Ready(Some(Err(open)));
                }
            }
        }
        let item = ready!(this.inner.as_mut().poll_next(cx));
        if let Some(permit) = this.permit.take() {
            match &item {
                Some(Ok(_)) => permit.success(),
                Some(Err(e)) if e.is_backend_failure() => permit.failure(),
                // A permanent error or the end says nothing about the backend's health.
                _ => drop(permit),
            }
        }
        Poll::Ready(item)
    }
}

/// A service with a [`CircuitBreakerLayer`] on top.
pub type CircuitBreakerService = Layered<CircuitBreakerLayer>;

impl CircuitBreakerService {
    pub fn new(inner: Arc<dyn MessagingService>, breaker: Arc<CircuitBreaker>) -> Self {
        Layered::wrap(inner, CircuitBreakerLayer::new(breaker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CircuitBreakerConfig;
    use crate::message::OutgoingMessage;
    use crate::providers::in_memory::InMemoryMessageService;
    use crate::queue_name::QueueName;
    use crate::resilience::fault::{FaultControl, FaultInjectingService};
    use crate::resilience::CircuitBreakerManager;
    use tokio::time::Instant;

    fn config(
        failure_threshold: u32,
        success_threshold: u32,
        half_open_max_calls: u32,
    ) -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            failure_threshold,
            success_threshold,
            timeout_ms: 1_000,
            half_open_max_calls,
        }
    }

    async fn protected(
        cfg: CircuitBreakerConfig,
    ) -> (CircuitBreakerService, Arc<FaultControl>, QueueName) {
        let mem: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let queue = QueueName::new("cb_queue").unwrap();
        mem.create_queue(&queue).await.unwrap();
        let fault = FaultInjectingService::new(mem);
        let control = fault.control();
        let svc =
            CircuitBreakerService::new(Arc::new(fault), Arc::new(CircuitBreaker::new("test", cfg)));
        (svc, control, queue)
    }

    #[tokio::test(start_paused = true)]
    async fn round_trip_closed_open_half_open_closed() {
        let (svc, control, queue) = protected(config(3, 2, 1)).await;
        let b = svc.breaker().clone();
        control.fail_always();
        for i in 0..3 {
            assert_eq!(
                b.state(),
                CircuitState::Closed,
                "still closed after {i} failures"
            );
            let err = svc
                .receive(&queue, 1, Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(matches!(err, MessagingError::Connection { .. }), "{err}");
        }
        assert_eq!(b.state(), CircuitState::Open);
        let opened_at = Instant::now();

        // Open: fails fast, the backend is not touched.
        let reached = control.calls();
        for _ in 0..100 {
            let err = svc
                .receive(&queue, 1, Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(matches!(err, MessagingError::CircuitOpen { ref name } if name == "test"));
        }
        assert_eq!(
            control.calls(),
            reached,
            "open circuit must not call the backend"
        );

        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(), CircuitState::HalfOpen);

        // A failing probe reopens it and restarts the timeout.
        svc.receive(&queue, 1, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_millis(1_000)).await;
        assert_eq!(b.state(), CircuitState::HalfOpen);

        control.heal();
        svc.receive(&queue, 1, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(b.state(), CircuitState::HalfOpen, "one success of two");
        svc.receive(&queue, 1, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(b.state(), CircuitState::Closed);
        let snap = b.snapshot();
        assert_eq!(snap.times_opened, 2);
        assert_eq!(snap.total_rejected, 100);
        assert_eq!(opened_at.elapsed(), Duration::from_secs(2));
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["state"], "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_never_open_the_circuit() {
        let (svc, _control, _queue) = protected(config(2, 1, 1)).await;
        let missing = QueueName::new("no_such_queue").unwrap();
        for _ in 0..20 {
            let err = svc
                .send(&missing, OutgoingMessage::new("x"))
                .await
                .unwrap_err();
            assert!(matches!(err, MessagingError::QueueNotFound { .. }));
            let err = svc
                .delete_message(&missing, &crate::ReceiptHandle::from_text("bogus"))
                .await
                .unwrap_err();
            assert!(matches!(err, MessagingError::InvalidReceipt { .. }));
        }
        assert_eq!(svc.breaker().state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_consecutive_failure_count() {
        let (svc, control, queue) = protected(config(3, 1, 1)).await;
        for _ in 0..10 {
            control.fail_next(2);
            for _ in 0..3 {
                let _ = svc.get_queue_stats(&queue).await;
            }
        }
        assert_eq!(svc.breaker().state(), CircuitState::Closed);
        control.fail_next(3);
        for _ in 0..3 {
            let _ = svc.get_queue_stats(&queue).await;
        }
        assert_eq!(svc.breaker().state(), CircuitState::Open);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_open_admits_at_most_the_configured_probes_under_concurrency() {
        let cfg = CircuitBreakerConfig {
            failure_threshold: 1,
            success_threshold: 100,
            timeout_ms: 0,
            half_open_max_calls: 2,
        };
        let (svc, control, queue) = protected(cfg).await;
        control.fail_next(1);
        svc.receive(&queue, 1, Duration::from_secs(1))
            .await
            .unwrap_err();
        // timeout 0: the next call finds it half-open.
        control.set_latency(Duration::from_millis(50));
        let before = control.calls();
        let svc = Arc::new(svc);
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (svc, queue) = (svc.clone(), queue.clone());
                tokio::spawn(async move { svc.receive(&queue, 1, Duration::from_secs(1)).await })
            })
            .collect();
        let mut fast_failed = 0;
        for t in tasks {
            if let Err(MessagingError::CircuitOpen { .. }) = t.await.unwrap() {
                fast_failed += 1;
            }
        }
        assert!(
            control.max_concurrent() <= 2,
            "{} probes at once",
            control.max_concurrent()
        );
        assert!(control.calls() - before >= 2);
        assert!(
            fast_failed >= 1,
            "some of 32 concurrent calls must be refused"
        );
    }

    #[tokio::test]
    async fn manager_shares_breakers_by_name_and_snapshots_them() {
        let m = CircuitBreakerManager::new(config(1, 1, 1));
        let a = m.get_or_create("pgmq");
        assert!(Arc::ptr_eq(&a, &m.get_or_create("pgmq")));
        m.get_or_create("rabbitmq");
        a.record_failure();
        let snap = m.snapshot();
        assert_eq!(snap.breakers.len(), 2);
        assert_eq!(snap.open, 1);
        assert_eq!(snap.breakers[0].name, "pgmq");
        assert_eq!(snap.breakers[0].state, CircuitState::Open);
        let json = serde_json::to_string(&snap).unwrap();
        assert!(json.contains("\"open\""), "{json}");
    }
}
