//! The conformance suite through the resilience layers: wrapping a provider must not change
//! the contract it keeps. Also the layer model from a user's side: a layer written outside the
//! crate, and a push consumer passing the metrics and breaker layers.

use std::sync::Arc;
use std::time::Duration;

use tasker_messaging::conformance::{run_suite, ProviderFactory};
#[cfg(feature = "rabbitmq")]
use tasker_messaging::conformance::{url_with_password, Credentials, Suite};
use tasker_messaging::resilience::{
    BackpressureLayer, CircuitBreaker, CircuitBreakerLayer, GlobalBackpressureController, Layer,
    LayerFuture, Next, Request, RetryLayer, ServiceStack, ShadowService,
};
use tasker_messaging::MetricsLayer;
use tasker_messaging::{
    BackpressureConfig, CircuitBreakerConfig, InMemoryMessageService, MessagingService,
    MessagingServiceExt, OutgoingMessage, QueueName, RetryPolicy, StepMessage,
};

fn shared(service: Arc<dyn MessagingService>) -> ProviderFactory {
    Arc::new(move || {
        let service = service.clone();
        Box::pin(async move { Ok(service) })
    })
}

/// The documented stack, from the provider outwards: backpressure, breaker, retry, metrics.
fn stack(provider: Arc<dyn MessagingService>) -> Arc<dyn MessagingService> {
    let breaker = Arc::new(CircuitBreaker::new(
        "conformance",
        CircuitBreakerConfig::default(),
    ));
    ServiceStack::new(provider)
        .layer(BackpressureLayer::new(GlobalBackpressureController::new(
            BackpressureConfig::default(),
        )))
        .layer(CircuitBreakerLayer::new(breaker))
        .layer(RetryLayer::new(RetryPolicy::default()))
        .layer(MetricsLayer::new())
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_resilience_stack_in_memory() {
    let service = stack(Arc::new(InMemoryMessageService::default()));
    run_suite("resilience_stack", shared(service))
        .await
        .assert_passed();
}

/// Shadow mode answers from the primary, so it keeps the primary's contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_shadow_in_memory() {
    let shadow: Arc<dyn MessagingService> = Arc::new(ShadowService::new(
        Arc::new(InMemoryMessageService::default()),
        Arc::new(InMemoryMessageService::default()),
    ));
    run_suite("shadow", shared(shadow)).await.assert_passed();
}

/// RabbitMQ through the same stack: its push consumer now passes every layer, and the
/// contract holds. Each factory call opens its own connection, as in conformance_rabbitmq.rs.
#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_resilience_stack_rabbitmq() {
    if rabbitmq_support::service().await.is_none() {
        return;
    }
    const WRONG_PASSWORD: &str = "Wr0ng-pw/so%secret";
    let stacked = |settings: tasker_messaging::RabbitMqSettings| -> ProviderFactory {
        Arc::new(move || {
            let settings = settings.clone();
            Box::pin(async move {
                let svc = tasker_messaging::RabbitMqMessageService::new(settings)?;
                svc.initialize().await?;
                Ok(stack(Arc::new(svc)))
            })
        })
    };
    let settings = rabbitmq_support::settings();
    let mut wrong = settings.clone();
    wrong.url = tasker_messaging::SecretUrl::new(
        url_with_password(settings.url.expose(), WRONG_PASSWORD).expect("the AMQP URL is a URL"),
    );
    // Errors pass the layers too: none may show the password.
    Suite::new("rabbitmq_resilience_stack", stacked(settings))
        .credentials(Credentials::WrongPassword {
            factory: stacked(wrong),
            password: WRONG_PASSWORD.into(),
        })
        .run()
        .await
        .assert_passed();
}

/// The user-defined layer of docs/resilience.md: stamps a tenant into every outgoing JSON
/// message (send, send_batch, AMQP publish); other payloads pass unchanged.
struct TenantHeader {
    tenant: String,
}

impl Layer for TenantHeader {
    fn call(&self, mut request: Request<'_>, next: Next<'_>) -> impl LayerFuture {
        for message in request.outgoing_mut() {
            if let Ok(serde_json::Value::Object(mut fields)) =
                serde_json::from_slice(&message.payload)
            {
                fields.insert("tenant".into(), self.tenant.clone().into());
                if let Ok(bytes) = serde_json::to_vec(&fields) {
                    message.payload = bytes.into();
                }
            }
        }
        async move { next.run(request).await }
    }
}

#[tokio::test]
async fn a_user_defined_layer_sees_every_send_and_keeps_the_contract() {
    let service = ServiceStack::new(Arc::new(InMemoryMessageService::default()))
        .layer(TenantHeader {
            tenant: "acme".into(),
        })
        .layer(RetryLayer::new(RetryPolicy::default()))
        .build();
    let queue = QueueName::new("user_layer_tenant").unwrap();
    service.create_queue(&queue).await.unwrap();
    let step = StepMessage::random();
    service.send_message(&queue, &step).await.unwrap();
    service
        .send_messages(&queue, &[StepMessage::random(), StepMessage::random()])
        .await
        .unwrap();
    service
        .send(&queue, OutgoingMessage::new("not json"))
        .await
        .unwrap();

    let got = service
        .receive(&queue, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.len(), 4);
    for m in &got[..3] {
        let json: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(json["tenant"], "acme", "{json}");
    }
    assert_eq!(
        &got[3].payload[..],
        b"not json",
        "non-JSON passes unchanged"
    );
    // The typed layer still decodes the stamped message, ids intact.
    let typed: StepMessage = got[0].decode().unwrap();
    assert_eq!(typed.task_uuid, step.task_uuid);
    assert_eq!(typed.correlation_id, step.correlation_id);
}

/// A push consumer on RabbitMQ passes the layers: its items are counted by the metrics layer,
/// and an open breaker stops it before it subscribes (the messages stay at the broker) until
/// the breaker lets a probe through.
#[cfg(feature = "rabbitmq")]
mod rabbitmq_support;

#[cfg(feature = "rabbitmq")]
#[test]
fn a_rabbitmq_push_consumer_is_counted_and_stopped_by_an_open_breaker() {
    use futures::StreamExt;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tasker_messaging::{ConsumerExt, ConsumerOptions, MessagingError};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let queue = QueueName::new(format!("layers_push_{}", std::process::id())).unwrap();
    let ran = metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let Some(rabbit) = rabbitmq_support::service().await else {
                return false;
            };
            assert!(rabbit.capabilities().push_consumer);
            let raw: Arc<dyn MessagingService> = rabbit.clone();
            let breaker = Arc::new(CircuitBreaker::new(
                "push",
                CircuitBreakerConfig {
                    failure_threshold: 1,
                    success_threshold: 1,
                    timeout_ms: 1_500,
                    half_open_max_calls: 1,
                },
            ));
            let service = ServiceStack::new(rabbit)
                .layer(CircuitBreakerLayer::new(breaker.clone()))
                .layer(MetricsLayer::new())
                .build();
            let _ = service.delete_queue(&queue).await;
            service.create_queue(&queue).await.unwrap();
            let batch = (0..5u8).map(|i| OutgoingMessage::new(vec![i])).collect();
            service.send_batch(&queue, batch).await.unwrap();
            let options = ConsumerOptions::default();
            let mut stream = service.consume(&queue, options.clone());
            for _ in 0..5 {
                let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .expect("a message within 10 s")
                    .expect("the stream goes on")
                    .expect("a message");
                service.delete_message(&queue, m.receipt()).await.unwrap();
            }
            drop(stream);

            breaker.record_failure();
            // Sends through the stack fail fast now; send below it.
            let batch = (0..3u8).map(|i| OutgoingMessage::new(vec![i])).collect();
            raw.send_batch(&queue, batch).await.unwrap();
            let mut stream = service.consume(&queue, options);
            let first = stream.next().await.expect("an item");
            assert!(
                matches!(first, Err(MessagingError::CircuitOpen { ref name }) if name == "push"),
                "{first:?}"
            );
            // While open the stream pauses and does not subscribe: the broker keeps all three.
            let quiet = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
            assert!(quiet.is_err(), "nothing while open: {quiet:?}");
            // Stats through the stack fail fast too, so ask the provider below.
            let stats = raw.get_queue_stats(&queue).await.unwrap();
            assert_eq!(stats.message_count, 3, "{stats:?}");
            // After the timeout the stream's probe succeeds and it delivers.
            for _ in 0..3 {
                let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .expect("a message after the breaker's timeout")
                    .expect("the stream goes on")
                    .expect("a message");
                service.delete_message(&queue, m.receipt()).await.unwrap();
            }
            assert_eq!(
                breaker.state(),
                tasker_messaging::resilience::CircuitState::Closed
            );
            drop(stream);
            service.delete_queue(&queue).await.unwrap();
            true
        })
    });
    if !ran {
        return;
    }
    let received: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, _, _, _)| {
            key.key().name() == "tasker_messages_received_total"
                && key.key().labels().any(|l| l.value() == queue.as_str())
        })
        .map(|(_, _, _, value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(received, 8, "every pushed message counted once");
}

#[cfg(feature = "pgmq")]
mod support;

/// Calls through `pgmq()` of a stacked service pass every layer: the fault layer sees them and
/// can fail them, the retry layer repeats the safe ones.
#[cfg(feature = "pgmq")]
#[tokio::test]
async fn pgmq_extension_calls_pass_the_layers() {
    use tasker_messaging::resilience::{FaultControl, FaultLayer};
    let Some(pgmq) = support::service().await else {
        return;
    };
    let control = FaultControl::new();
    let service = ServiceStack::new(Arc::new(pgmq))
        .layer(FaultLayer::new(control.clone()))
        .layer(RetryLayer::new(RetryPolicy {
            initial_backoff_ms: 1,
            jitter: false,
            ..RetryPolicy::default()
        }))
        .build();
    let ext = service
        .pgmq()
        .expect("the stack keeps the provider's extensions");
    let queue = support::queue("layers_ext");
    ext.create_queue_with_vt(&queue, Duration::from_secs(2))
        .await
        .unwrap();
    service
        .send(&queue, OutgoingMessage::new("{\"i\":1}"))
        .await
        .unwrap();
    let before = control.calls();
    control.fail_next(2);
    let read = ext.read_batch(&queue, Duration::ZERO, 5).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(
        control.calls() - before,
        3,
        "two injected failures, then the read"
    );
    assert_eq!(control.injected(), 2);
    control.fail_always();
    let err = ext.get_metrics(&queue).await.unwrap_err();
    assert!(err.to_string().contains("pgmq_get_metrics"), "{err}");
    control.heal();
    service.delete_queue(&queue).await.unwrap();
}
