//! Fallback: start a configured secondary provider when the primary cannot start.
//!
//! [`build_service_with_fallback`] builds and initializes the provider `config.provider`
//! names. When that fails (not compiled in, unreachable, refused) and `[fallback]` names a
//! secondary, it logs why at `warn`, builds the secondary from the same `[connection]` section
//! and returns it wrapped in a [`FallbackService`], whose `health_check` reports
//! `Degraded { reason }` saying which provider it replaced and why, for as long as it runs.
//! Without `[fallback]`, or when the secondary fails too, the error names both failures.
//!
//! The primary gets one attempt: wrap the factories in retry yourself if starts are flaky.

use std::sync::Arc;

use super::layer::{Layer, LayerFuture, Next, Request, Response};
use super::layered::Layered;
use crate::config::MessagingConfig;
use crate::error::{MessagingError, Result};
use crate::factory::{configured_stack, create_service};
use crate::service::{MessagingHealth, MessagingService, ProviderKind};

/// Marks a secondary provider running in place of the primary: its health says so.
pub struct FallbackLayer {
    primary: ProviderKind,
    reason: String,
}

impl FallbackLayer {
    pub fn new(primary: ProviderKind, reason: impl Into<String>) -> Self {
        FallbackLayer {
            primary,
            reason: reason.into(),
        }
    }

    /// Why the primary is not in use.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The provider this one replaces.
    pub fn primary(&self) -> ProviderKind {
        self.primary
    }

    fn degrade(&self, running: ProviderKind, health: MessagingHealth) -> MessagingHealth {
        match health {
            MessagingHealth::Healthy { .. } => MessagingHealth::Degraded {
                reason: format!(
                    "running on fallback provider {running} because {} could not start: {}",
                    self.primary, self.reason
                ),
            },
            MessagingHealth::Degraded { reason } => MessagingHealth::Degraded {
                reason: format!("fallback {running}: {reason}"),
            },
            unhealthy => unhealthy,
        }
    }
}

impl Layer for FallbackLayer {
    fn call(&self, request: Request<'_>, next: Next<'_>) -> impl LayerFuture {
        async move {
            match next.run(request).await? {
                Response::Health(health) => Ok(Response::Health(
                    self.degrade(next.service().provider(), health),
                )),
                other => Ok(other),
            }
        }
    }
}

/// A service with a [`FallbackLayer`] on top.
pub type FallbackService = Layered<FallbackLayer>;

impl FallbackService {
    pub fn new(
        inner: Arc<dyn MessagingService>,
        primary: ProviderKind,
        reason: impl Into<String>,
    ) -> Self {
        Layered::wrap(inner, FallbackLayer::new(primary, reason))
    }
}

/// Builds a service on demand (the fallback is only built when needed).
pub type ServiceFactory = Box<dyn FnOnce() -> Result<Arc<dyn MessagingService>> + Send>;

/// Initializes `primary`; if that fails, initializes `secondary` and returns it wrapped in a
/// [`FallbackService`] carrying the primary's error as the reason.
pub async fn start_with_fallback(
    primary: Result<Arc<dyn MessagingService>>,
    primary_kind: ProviderKind,
    secondary: Option<ServiceFactory>,
) -> Result<Arc<dyn MessagingService>> {
    let primary_error = match primary {
        Ok(service) => match service.initialize().await {
            Ok(()) => {
                tracing::info!(provider = %primary_kind, "messaging service ready");
                return Ok(service);
            }
            Err(e) => e,
        },
        Err(e) => e,
    };
    let Some(make_secondary) = secondary else {
        return Err(primary_error);
    };
    let reason = primary_error.to_string();
    tracing::warn!(primary = %primary_kind, %reason, "primary messaging provider could not start; trying the fallback");
    let service = make_secondary().map_err(|e| both_failed(primary_kind, &reason, e))?;
    let secondary_kind = service.provider();
    service
        .initialize()
        .await
        .map_err(|e| both_failed(primary_kind, &reason, e))?;
    tracing::warn!(primary = %primary_kind, fallback = %secondary_kind, %reason, "running on the fallback messaging provider");
    Ok(Arc::new(FallbackService::new(
        service,
        primary_kind,
        reason,
    )))
}

fn both_failed(primary: ProviderKind, reason: &str, secondary: MessagingError) -> MessagingError {
    MessagingError::NotInitialized(format!(
        "{primary} could not start ({reason}) and the fallback could not either ({secondary})"
    ))
}

/// Builds the configured provider, or the `[fallback]` provider when it cannot start, inside
/// the configured layers of the provider that runs ([`crate::factory::configured_stack`]).
pub async fn build_service_with_fallback(
    config: &MessagingConfig,
) -> Result<Arc<dyn MessagingService>> {
    config.validate()?;
    let secondary = config.fallback.as_ref().map(|f| {
        let mut secondary = config.clone();
        secondary.provider = f.provider;
        secondary.fallback = None;
        Box::new(move || create_service(&secondary)) as ServiceFactory
    });
    let service = start_with_fallback(create_service(config), config.provider, secondary).await?;
    Ok(configured_stack(config, service).build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::in_memory::InMemoryMessageService;
    use crate::resilience::fault::{FaultControl, FaultInjectingService};
    use crate::resilience::Op;

    fn faulty(op_fails: bool) -> (Arc<dyn MessagingService>, Arc<FaultControl>) {
        let fault = FaultInjectingService::new(Arc::new(InMemoryMessageService::default()));
        let control = fault.control();
        if op_fails {
            control.only(&[Op::Initialize]);
            control.fail_always();
        }
        (Arc::new(fault), control)
    }

    #[cfg(not(feature = "kafka"))]
    #[tokio::test]
    async fn configured_fallback_takes_over_when_the_primary_is_not_available() {
        // Kafka is not compiled into this build: the primary cannot start.
        let config = MessagingConfig::from_toml_str(
            "provider = 'kafka'\n[connection.kafka]\nbrokers = '127.0.0.1:9092'\n\
             [fallback]\nprovider = 'in_memory'",
        )
        .unwrap();
        let svc = build_service_with_fallback(&config).await.unwrap();
        assert_eq!(svc.provider(), ProviderKind::InMemory);
        match svc.health_check().await.unwrap() {
            MessagingHealth::Degraded { reason } => {
                assert!(reason.contains("fallback provider in_memory"), "{reason}");
                assert!(reason.contains("kafka is not available"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let q = crate::queue_name::QueueName::new("fallback_q").unwrap();
        svc.create_queue(&q).await.unwrap();
        svc.send(&q, crate::OutgoingMessage::new("works"))
            .await
            .unwrap();
        assert_eq!(svc.get_queue_stats(&q).await.unwrap().message_count, 1);

        let no_fallback = MessagingConfig::from_toml_str(
            "provider = 'kafka'\n[connection.kafka]\nbrokers = '127.0.0.1:9092'",
        )
        .unwrap();
        assert!(matches!(
            build_service_with_fallback(&no_fallback).await,
            Err(MessagingError::ProviderUnavailable { .. })
        ));
    }

    #[tokio::test]
    async fn a_primary_whose_initialize_fails_falls_back_and_a_healthy_one_does_not() {
        let (primary, control) = faulty(true);
        let (secondary, _) = faulty(false);
        let secondary2 = secondary.clone();
        let svc = start_with_fallback(
            Ok(primary),
            ProviderKind::Pgmq,
            Some(Box::new(move || Ok(secondary2))),
        )
        .await
        .unwrap();
        assert_eq!(control.injected(), 1);
        let health = svc.health_check().await.unwrap();
        assert!(
            matches!(&health, MessagingHealth::Degraded { reason } if reason.contains("pgmq could not start") && reason.contains("injected fault during initialize")),
            "{health:?}"
        );

        let (primary, _) = faulty(false);
        let svc = start_with_fallback(
            Ok(primary),
            ProviderKind::InMemory,
            Some(Box::new(move || Ok(secondary))),
        )
        .await
        .unwrap();
        assert!(
            svc.health_check().await.unwrap().is_healthy(),
            "the primary runs undecorated"
        );

        let (primary, _) = faulty(true);
        let (bad_secondary, _) = faulty(true);
        let err = match start_with_fallback(
            Ok(primary),
            ProviderKind::Pgmq,
            Some(Box::new(move || Ok(bad_secondary))),
        )
        .await
        {
            Err(e) => e.to_string(),
            Ok(_) => panic!("both fail"),
        };
        assert!(
            err.contains("pgmq could not start") && err.contains("fallback could not"),
            "{err}"
        );
    }
}
