//! [`ServiceStack`]: the one readable place where layers are put around a provider.
//!
//! Layers are listed from the provider outwards: each `.layer(x)` wraps everything before it.
//!
//! ```
//! # use std::sync::Arc;
//! use tasker_messaging::resilience::{CircuitBreaker, CircuitBreakerLayer, RetryLayer, ServiceStack};
//! use tasker_messaging::MetricsLayer;
//! use tasker_messaging::{CircuitBreakerConfig, InMemoryMessageService, RetryPolicy};
//!
//! let breaker = Arc::new(CircuitBreaker::new("pgmq", CircuitBreakerConfig::default()));
//! let service = ServiceStack::new(Arc::new(InMemoryMessageService::default()))
//!     .layer(CircuitBreakerLayer::new(breaker))   // innermost: guards every attempt
//!     .layer(RetryLayer::new(RetryPolicy::default()))
//!     .layer(MetricsLayer::new())                  // outermost: one count per caller's call
//!     .build();
//! # let _ = service;
//! ```

use std::sync::Arc;

use super::layer::Layer;
use super::layered::Layered;
use crate::service::MessagingService;

/// A provider and the layers around it, built from the inside out.
#[must_use = "call build() to get the service"]
pub struct ServiceStack {
    service: Arc<dyn MessagingService>,
}

impl ServiceStack {
    /// Starts from `provider` (or any service).
    pub fn new(provider: Arc<dyn MessagingService>) -> Self {
        ServiceStack { service: provider }
    }

    /// Wraps everything so far in `layer`.
    pub fn layer<L: Layer>(self, layer: L) -> Self {
        ServiceStack {
            service: Arc::new(Layered::wrap(self.service, layer)),
        }
    }

    /// Wraps in `layer` when there is one.
    pub fn option_layer<L: Layer>(self, layer: Option<L>) -> Self {
        match layer {
            Some(layer) => self.layer(layer),
            None => self,
        }
    }

    /// The stack as one service.
    pub fn build(self) -> Arc<dyn MessagingService> {
        self.service
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::config::CircuitBreakerConfig;
    use crate::consumer::polling_stream;
    use crate::error::MessagingError;
    use crate::message::OutgoingMessage;
    use crate::observability::MetricsLayer;
    use crate::providers::in_memory::InMemoryMessageService;
    use crate::queue_name::QueueName;
    use crate::resilience::layer::StreamInfo;
    use crate::resilience::{
        CircuitBreaker, CircuitBreakerLayer, CircuitState, FaultControl, FaultLayer,
    };
    use crate::service::ConsumerOptions;
    use crate::typed::ConsumerExt;

    fn breaker(failure_threshold: u32) -> Arc<CircuitBreaker> {
        Arc::new(CircuitBreaker::new(
            "stream",
            CircuitBreakerConfig {
                failure_threshold,
                success_threshold: 1,
                timeout_ms: 10_000,
                half_open_max_calls: 1,
            },
        ))
    }

    async fn seeded(name: &str, n: u8) -> (Arc<dyn MessagingService>, QueueName) {
        let mem: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let queue = QueueName::new(name).unwrap();
        mem.create_queue(&queue).await.unwrap();
        let batch = (0..n).map(|i| OutgoingMessage::new(vec![i])).collect();
        mem.send_batch(&queue, batch).await.unwrap();
        (mem, queue)
    }

    /// Drives `stream` for `span` of paused time; returns the items it yielded.
    async fn drive(stream: &mut crate::service::MessageStream, span: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        let end = tokio::time::Instant::now() + span;
        while let Ok(Some(item)) = tokio::time::timeout_at(end, stream.next()).await {
            seen.push(match item {
                Ok(_) => "message".to_owned(),
                Err(e) => format!("{e:?}"),
            });
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_stream_through_the_stack_stops_at_an_open_breaker() {
        let (mem, queue) = seeded("stack_stream_breaker", 3).await;
        let control = FaultControl::new();
        let b = breaker(2);
        let service = ServiceStack::new(mem)
            .layer(FaultLayer::new(control.clone()))
            .layer(CircuitBreakerLayer::new(b.clone()))
            .layer(MetricsLayer::new())
            .build();
        control.fail_always();
        let mut stream = service.consume(&queue, ConsumerOptions::default());
        let seen = drive(&mut stream, Duration::from_secs(5)).await;
        assert!(seen[0].starts_with("Connection") && seen[1].starts_with("Connection"));
        assert!(
            seen[2..].iter().all(|s| s.starts_with("CircuitOpen")),
            "{seen:?}"
        );
        // Errors are followed by the stream's idle pause (1 ms doubling to 250 ms).
        assert!(
            seen.len() <= 5_000 / 250 + 12,
            "paced, not a spin: {} items",
            seen.len()
        );
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(
            control.calls(),
            2,
            "nothing reached the provider while open"
        );

        // The breaker's timeout passes, the backend is back: the stream delivers.
        control.heal();
        let seen = drive(&mut stream, Duration::from_secs(6)).await;
        assert_eq!(
            seen.iter().filter(|s| *s == "message").count(),
            3,
            "{seen:?}"
        );
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_native_stream_under_an_open_breaker_is_not_pulled() {
        let (mem, queue) = seeded("stack_native_breaker", 2).await;
        let control = FaultControl::new();
        let below = ServiceStack::new(mem)
            .layer(FaultLayer::new(control.clone()))
            .build();
        let options = ConsumerOptions::default();
        // A provider's push stream stands in as the receive loop of the service below.
        let native = polling_stream(below, queue.clone(), options.clone());
        let b = breaker(1);
        b.record_failure();
        let info = StreamInfo {
            queue: &queue,
            options: &options,
            provider: crate::service::ProviderKind::InMemory,
        };
        let mut guarded = CircuitBreakerLayer::new(b.clone()).stream(&info, native);
        let seen = drive(&mut guarded, Duration::from_secs(5)).await;
        assert_eq!(seen.len(), 1, "one CircuitOpen, then a pause: {seen:?}");
        assert!(seen[0].starts_with("CircuitOpen"));
        assert_eq!(control.calls(), 0, "the inner stream was never polled");
        let seen = drive(&mut guarded, Duration::from_secs(6)).await;
        assert_eq!(seen, ["message", "message"], "delivers once a probe is due");
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[test]
    fn a_consumer_stream_through_the_stack_is_counted_by_the_metrics_layer() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (mem, queue) = seeded("stack_stream_metrics", 7).await;
                let service = ServiceStack::new(mem).layer(MetricsLayer::new()).build();
                let mut stream = service.consume(&queue, ConsumerOptions::default());
                for _ in 0..7 {
                    let m = stream.next().await.unwrap().unwrap();
                    service.delete_message(&queue, m.receipt()).await.unwrap();
                }
                // The native-stream path counts each item as it passes.
                let options = ConsumerOptions::default();
                let info = StreamInfo {
                    queue: &queue,
                    options: &options,
                    provider: crate::service::ProviderKind::InMemory,
                };
                service
                    .send(&queue, OutgoingMessage::new("one more"))
                    .await
                    .unwrap();
                let below = polling_stream(service.clone(), queue.clone(), options.clone());
                let mut counted = MetricsLayer::new().stream(&info, below);
                counted.next().await.unwrap().unwrap();
            });
        });
        // One snapshot: taking one resets what the next sees.
        let snapshot = snapshotter.snapshot().into_vec();
        let counter = |name: &str| -> u64 {
            snapshot
                .iter()
                .filter(|(k, _, _, _)| {
                    k.key().name() == name
                        && k.key()
                            .labels()
                            .any(|l| l.value() == "stack_stream_metrics")
                })
                .map(|(_, _, _, v)| match v {
                    DebugValue::Counter(n) => *n,
                    _ => 0,
                })
                .sum()
        };
        // 7 through receives, then 1 counted twice: by the receive below and by the stream.
        assert_eq!(counter("tasker_messages_received_total"), 7 + 2);
        assert_eq!(counter("tasker_messages_acked_total"), 7);
        assert_eq!(counter("tasker_messages_sent_total"), 1);
    }

    #[tokio::test]
    async fn extension_calls_pass_the_layers_and_missing_ones_stay_missing() {
        let (mem, queue) = seeded("stack_extensions", 1).await;
        let control = FaultControl::new();
        let service = ServiceStack::new(mem)
            .layer(FaultLayer::new(control.clone()))
            .build();
        assert!(service.pgmq().is_none() && service.amqp().is_none());
        let _ = service.get_queue_stats(&queue).await.unwrap();
        assert_eq!(control.calls(), 1);
        let err = super::super::layer::dispatch(
            &*service,
            super::super::layer::Request::Pgmq(super::super::layer::PgmqRequest::Metrics {
                queue: &queue,
            }),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, MessagingError::Unsupported { .. }), "{err}");
    }
}
