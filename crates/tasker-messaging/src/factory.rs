//! Builds the configured provider at runtime: switching backend is a configuration change.

use std::sync::Arc;

use crate::config::MessagingConfig;
use crate::error::{MessagingError, Result};
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
        ProviderKind::Sqs | ProviderKind::Redis | ProviderKind::Kafka | ProviderKind::Nats => false,
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
        other => Err(MessagingError::ProviderUnavailable { provider: other }),
    }
}

/// Builds the configured service, checks its resource needs against `limits`, and
/// initializes it.
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
    Ok(service)
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
