//! The conformance suite through the resilience layers: wrapping a provider must not change
//! the contract it keeps.

use std::sync::Arc;

use tasker_messaging::conformance::{run_suite, ProviderFactory};
use tasker_messaging::resilience::{
    BackpressureService, CircuitBreaker, CircuitBreakerService, GlobalBackpressureController,
    RetryService, ShadowService,
};
use tasker_messaging::{
    BackpressureConfig, CircuitBreakerConfig, InMemoryMessageService, MessagingService, RetryPolicy,
};

fn shared(service: Arc<dyn MessagingService>) -> ProviderFactory {
    Arc::new(move || {
        let service = service.clone();
        Box::pin(async move { Ok(service) })
    })
}

/// Retry -> circuit breaker -> backpressure -> in-memory, the documented order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_resilience_stack_in_memory() {
    let provider: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
    let pressure = GlobalBackpressureController::new(BackpressureConfig::default());
    let breaker = Arc::new(CircuitBreaker::new(
        "conformance",
        CircuitBreakerConfig::default(),
    ));
    let stack: Arc<dyn MessagingService> = Arc::new(
        RetryService::new(
            Arc::new(CircuitBreakerService::new(
                Arc::new(BackpressureService::new(provider, pressure)),
                breaker.clone(),
            )),
            RetryPolicy::default(),
        )
        .with_breaker(breaker),
    );
    run_suite("resilience_stack", shared(stack))
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
