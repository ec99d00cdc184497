//! Builds the configured provider at runtime: switching backend is a configuration change.
//!
//! [`build_service`] returns the provider inside the stack [`configured_stack`] gives for it:
//!
//! * **in_memory: no layers.** It has no transient failures to retry or trip a breaker on, and
//!   its hot path stays one call (the benchmarks' in-memory round trip is this service).
//! * **every other provider:** a circuit breaker (`[circuit_breaker]`, named after the
//!   provider) inside retry (`[retry_policy]`), so each retry attempt passes the breaker and
//!   retries stop the moment it opens.
//!
//! Backpressure and metrics are not in the default stack: backpressure needs a controller that
//! something feeds samples to, and metrics need a recorder; add them with
//! `configured_stack(&config, provider).layer(...)`. The provider is initialized before the
//! layers go on, so a provider that cannot start fails at once (one attempt, no breaker), as
//! fallback expects.

use std::sync::Arc;

use crate::config::MessagingConfig;
use crate::error::{MessagingError, Result};
use crate::resilience::{CircuitBreaker, CircuitBreakerLayer, RetryLayer, ServiceStack};
use crate::resources::SystemResourceLimits;
use crate::service::{MessagingService, ProviderKind};

/// Providers compiled into this build.
pub fn available_providers() -> Vec<ProviderKind> {
    ProviderKind::ALL
        .into_iter()
        .filter(|p| is_available(*p))
        .collect()
}

fn is_available(provider: ProviderKind) -> bool {
    match provider {
        ProviderKind::InMemory => cfg!(feature = "in-memory"),
        ProviderKind::Pgmq => cfg!(feature = "pgmq"),
        ProviderKind::Rabbitmq => cfg!(feature = "rabbitmq"),
        ProviderKind::Redis => cfg!(feature = "redis"),
        ProviderKind::Sqs => cfg!(feature = "sqs"),
        ProviderKind::Nats => cfg!(feature = "nats"),
        ProviderKind::Kafka => cfg!(feature = "kafka"),
    }
}

/// Builds the service `config` names, without connecting.
pub fn create_service(config: &MessagingConfig) -> Result<Arc<dyn MessagingService>> {
    config.validate()?;
    match config.provider {
        #[cfg(feature = "in-memory")]
        ProviderKind::InMemory => Ok(Arc::new(
            crate::providers::in_memory::InMemoryMessageService::new(
                crate::providers::in_memory::InMemorySettings::from_config(config),
            ),
        )),
        #[cfg(feature = "pgmq")]
        ProviderKind::Pgmq => Ok(Arc::new(crate::providers::pgmq::PgmqMessageService::new(
            crate::providers::pgmq::PgmqSettings::from_config(config)?,
        )?)),
        #[cfg(feature = "rabbitmq")]
        ProviderKind::Rabbitmq => Ok(Arc::new(
            crate::providers::rabbitmq::RabbitMqMessageService::from_config(config)?,
        )),
        #[cfg(feature = "redis")]
        ProviderKind::Redis => Ok(Arc::new(
            crate::providers::redis::RedisMessageService::from_config(config)?,
        )),
        #[cfg(feature = "sqs")]
        ProviderKind::Sqs => Ok(Arc::new(
            crate::providers::sqs::SqsMessageService::from_config(config)?,
        )),
        #[cfg(feature = "kafka")]
        ProviderKind::Kafka => Ok(Arc::new(
            crate::providers::kafka::KafkaMessageService::from_config(config)?,
        )),
        #[cfg(feature = "nats")]
        ProviderKind::Nats => Ok(Arc::new(
            crate::providers::nats::NatsMessageService::from_config(config)?,
        )),
        // Reached only by a provider whose cargo feature is off in this build.
        #[allow(unreachable_patterns)]
        other => Err(MessagingError::ProviderUnavailable { provider: other }),
    }
}

/// The default layers for `provider` under `config` (see the module docs), as a stack to
/// build or to extend with more layers outside them.
pub fn configured_stack(
    config: &MessagingConfig,
    provider: Arc<dyn MessagingService>,
) -> ServiceStack {
    let kind = provider.provider();
    configured_stack_for(config, provider, kind)
}

fn configured_stack_for(
    config: &MessagingConfig,
    provider: Arc<dyn MessagingService>,
    kind: ProviderKind,
) -> ServiceStack {
    let stack = ServiceStack::new(provider);
    if kind == ProviderKind::InMemory {
        return stack;
    }
    let breaker = Arc::new(CircuitBreaker::new(
        kind.as_str(),
        config.circuit_breaker.clone(),
    ));
    stack
        .layer(CircuitBreakerLayer::new(breaker))
        .layer(RetryLayer::new(config.retry_policy.clone()))
}

/// Builds the configured service, checks its resource needs against `limits`, initializes
/// it, and puts the configured layers on it.
pub async fn build_service_with_limits(
    config: &MessagingConfig,
    limits: &SystemResourceLimits,
) -> Result<Arc<dyn MessagingService>> {
    let service = create_service(config)?;
    limits.validate(
        &service.resource_requirements(),
        &config.resource_validation,
    )?;
    service.initialize().await?;
    tracing::info!(provider = %service.provider(), "messaging service ready");
    Ok(configured_stack(config, service).build())
}

/// Builds and initializes the configured service (no known resource limits).
pub async fn build_service(config: &MessagingConfig) -> Result<Arc<dyn MessagingService>> {
    build_service_with_limits(config, &SystemResourceLimits::unknown()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_default_config_builds_the_in_memory_provider() {
        let svc = build_service(&MessagingConfig::default()).await.unwrap();
        assert_eq!(svc.provider(), ProviderKind::InMemory);
        assert!(available_providers().contains(&ProviderKind::InMemory));
    }

    #[tokio::test(start_paused = true)]
    async fn other_providers_get_retry_outside_a_breaker_from_the_configuration() {
        use crate::message::OutgoingMessage;
        use crate::queue_name::QueueName;
        use crate::resilience::{FaultControl, FaultInjectingService};
        let config = MessagingConfig::from_toml_str(
            "[retry_policy]\nmax_retries = 5\njitter = false\n\
             [circuit_breaker]\nfailure_threshold = 3",
        )
        .unwrap();
        // A fault wrapper reports the provider below it, so it stands in for a network one.
        let control = FaultControl::new();
        let below: Arc<dyn MessagingService> = Arc::new(FaultInjectingService::with_control(
            Arc::new(crate::InMemoryMessageService::default()),
            control.clone(),
        ));
        let service = configured_stack(&config, below.clone()).build();
        assert!(Arc::ptr_eq(&service, &below), "in-memory: no layers");

        // Any provider but in-memory gets the layers; the kind is what decides.
        let queue = QueueName::new("factory_stack").unwrap();
        below.create_queue(&queue).await.unwrap();
        let pgmq_like = configured_stack_for(&config, below.clone(), ProviderKind::Pgmq).build();
        control.fail_next(2);
        pgmq_like
            .send(&queue, OutgoingMessage::new("x"))
            .await
            .unwrap();
        assert_eq!(control.calls(), 1 + 3, "create, then two failures retried");
        control.fail_always();
        let err = pgmq_like.get_queue_stats(&queue).await.unwrap_err();
        assert!(matches!(err, MessagingError::CircuitOpen { .. }), "{err}");
        assert_eq!(
            control.calls(),
            4 + 3,
            "retries stop when the breaker opens"
        );
    }

    #[cfg(not(feature = "kafka"))]
    #[tokio::test]
    async fn a_provider_not_in_this_build_is_a_typed_error() {
        let config = MessagingConfig::from_toml_str(
            "provider = 'kafka'\n[connection.kafka]\nbrokers = '127.0.0.1:9092'",
        )
        .unwrap();
        match build_service(&config).await {
            Err(e @ MessagingError::ProviderUnavailable { provider }) => {
                assert_eq!(provider, ProviderKind::Kafka);
                assert!(e.to_string().contains("cargo feature `kafka`"), "{e}");
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("kafka is not compiled in"),
        }
    }
}
