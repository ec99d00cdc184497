//! [`ServiceStack`]: the one readable place where layers are put around a provider.
//!
//! Layers are listed from the provider outwards: each `.layer(x)` wraps everything before it.
//!
//! ```
//! # use std::sync::Arc;
//! use tasker_messaging::resilience::{CircuitBreaker, CircuitBreakerLayer, RetryLayer, ServiceStack};
//! use tasker_messaging::observability::MetricsLayer;
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
