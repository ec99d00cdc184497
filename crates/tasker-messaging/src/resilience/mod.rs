//! Resilience: layers that wrap any `Arc<dyn MessagingService>`, never code inside providers.
//!
//! Each layer implements [`MessagingService`] itself and delegates to the service it wraps, so
//! layers stack in any order and a provider gains them without knowing. The recommended order,
//! outermost first (see `docs/resilience.md`):
//!
//! ```text
//! RetryService -> CircuitBreakerService -> BackpressureService -> provider
//! ```
//!
//! Retry sits outside the breaker so that once the breaker opens every further attempt fails
//! fast with [`MessagingError::CircuitOpen`], which the retry layer never retries.
//!
//! * [`circuit_breaker`]: closed / open / half-open breaker, named breakers, the wrapper.
//! * [`retry`]: exponential backoff with jitter for operations safe to repeat.
//! * [`health`]: the executor-compatible health state machine.
//! * [`budget`]: a resource budget shared by messaging and executor pools.
//! * [`backpressure`]: global backpressure with hysteresis.
//! * [`fallback`]: start a configured secondary provider when the primary cannot start.
//! * [`shadow`]: write to two providers, read from one, report divergence.
//! * [`migrate`]: move a queue's messages between providers, ids preserved.
//! * [`fault`]: a fault-injecting wrapper for tests and benchmarks.

pub mod backpressure;
pub mod budget;
pub mod circuit_breaker;
pub mod fallback;
pub mod fault;
pub mod health;
pub mod migrate;
pub mod retry;
pub mod shadow;

use std::fmt;

use serde::Serialize;

pub use backpressure::{
    BackpressureService, BackpressureState, GlobalBackpressureController, PressureLevel,
    PressureSample,
};
pub use budget::{initialize_within_budget, BudgetReservation, BudgetSnapshot, ResourceBudget};
pub use circuit_breaker::{
    CircuitBreaker, CircuitBreakerManager, CircuitBreakerService, CircuitBreakerSnapshot,
    CircuitState,
};
pub use fallback::{build_service_with_fallback, start_with_fallback, FallbackService};
pub use fault::{FaultControl, FaultInjectingService};
pub use health::{
    HealthMonitor, HealthPolicy, HealthSignals, HealthState, HealthStateMachine,
    InvalidHealthTransition,
};
pub use migrate::{migrate_queue, MigrationOptions, MigrationProgress, MigrationReport};
pub use retry::{is_idempotent, RetryService};
pub use shadow::{DivergenceReport, ShadowService};

#[allow(unused_imports)]
use crate::error::MessagingError;
use crate::service::MessagingService;

/// The operations of [`MessagingService`] that reach the backend, as layers see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Initialize,
    HealthCheck,
    CreateQueue,
    Send,
    SendBatch,
    Receive,
    DeleteMessage,
    DeleteMessages,
    ChangeVisibility,
    DeadLetter,
    Redrive,
    Stats,
    Purge,
    DeleteQueue,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Initialize => "initialize",
            Op::HealthCheck => "health_check",
            Op::CreateQueue => "create_queue",
            Op::Send => "send",
            Op::SendBatch => "send_batch",
            Op::Receive => "receive",
            Op::DeleteMessage => "delete_message",
            Op::DeleteMessages => "delete_messages",
            Op::ChangeVisibility => "change_message_visibility",
            Op::DeadLetter => "dead_letter_message",
            Op::Redrive => "redrive_dead_letters",
            Op::Stats => "get_queue_stats",
            Op::Purge => "purge_queue",
            Op::DeleteQueue => "delete_queue",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A wrapper around one inner service.
pub(crate) trait Layer {
    fn inner(&self) -> &dyn MessagingService;
    /// What the wrapper holds; by default what the inner service holds.
    fn requirements(&self) -> crate::resources::ResourceRequirements {
        self.inner().resource_requirements()
    }
}

/// Implements [`MessagingService`] for a wrapper type that implements [`Layer`] and has
/// `async fn run<T, F, Fut>(&self, op: Op, f: F) -> Result<T>` (where `F: Fn() -> Fut` makes
/// one attempt). Every backend operation goes through `run`; `capabilities`, `pgmq()`,
/// `amqp()`, `wait_for_messages`, `native_consumer_stream` and `shutdown` go straight to the
/// inner service. `health = method` replaces `health_check` with the type's own method.
macro_rules! layered_service {
    ($ty:ty) => {
        $crate::resilience::layered_service!(@impl $ty, |this| {
            this.run($crate::resilience::Op::HealthCheck, || $crate::resilience::Layer::inner(this).health_check()).await
        });
    };
    ($ty:ty, health = $health:ident) => {
        $crate::resilience::layered_service!(@impl $ty, |this| { this.$health().await });
    };
    (@impl $ty:ty, |$this:ident| $health_body:block) => {
        #[async_trait::async_trait]
        impl $crate::service::MessagingService for $ty {
            fn provider(&self) -> $crate::service::ProviderKind {
                $crate::resilience::Layer::inner(self).provider()
            }
            fn capabilities(&self) -> &$crate::service::Capabilities {
                $crate::resilience::Layer::inner(self).capabilities()
            }
            fn resource_requirements(&self) -> $crate::resources::ResourceRequirements {
                $crate::resilience::Layer::requirements(self)
            }
            async fn initialize(&self) -> $crate::error::Result<()> {
                self.run($crate::resilience::Op::Initialize, || $crate::resilience::Layer::inner(self).initialize())
                    .await
            }
            async fn health_check(&self) -> $crate::error::Result<$crate::service::MessagingHealth> {
                let $this = self;
                $health_body
            }
            async fn shutdown(&self) -> $crate::error::Result<()> {
                $crate::resilience::Layer::inner(self).shutdown().await
            }
            async fn create_queue_with(
                &self,
                queue: &$crate::queue_name::QueueName,
                options: &$crate::service::QueueOptions,
            ) -> $crate::error::Result<()> {
                self.run($crate::resilience::Op::CreateQueue, || {
                    $crate::resilience::Layer::inner(self).create_queue_with(queue, options)
                })
                .await
            }
            async fn create_queue(
                &self,
                queue: &$crate::queue_name::QueueName,
            ) -> $crate::error::Result<()> {
                self.run($crate::resilience::Op::CreateQueue, || $crate::resilience::Layer::inner(self).create_queue(queue))
                    .await
            }
            async fn send(
                &self,
                queue: &$crate::queue_name::QueueName,
                message: $crate::message::OutgoingMessage,
            ) -> $crate::error::Result<$crate::message::MessageId> {
                self.run($crate::resilience::Op::Send, || {
                    $crate::resilience::Layer::inner(self).send(queue, message.clone())
                })
                .await
            }
            async fn send_batch(
                &self,
                queue: &$crate::queue_name::QueueName,
                messages: Vec<$crate::message::OutgoingMessage>,
            ) -> $crate::error::Result<Vec<$crate::message::MessageId>> {
                self.run($crate::resilience::Op::SendBatch, || {
                    $crate::resilience::Layer::inner(self).send_batch(queue, messages.clone())
                })
                .await
            }
            async fn receive(
                &self,
                queue: &$crate::queue_name::QueueName,
                max_messages: usize,
                visibility_timeout: std::time::Duration,
            ) -> $crate::error::Result<Vec<$crate::message::ReceivedMessage>> {
                self.run($crate::resilience::Op::Receive, || {
                    $crate::resilience::Layer::inner(self).receive(queue, max_messages, visibility_timeout)
                })
                .await
            }
            async fn delete_message(
                &self,
                queue: &$crate::queue_name::QueueName,
                receipt: &$crate::message::ReceiptHandle,
            ) -> $crate::error::Result<()> {
                self.run($crate::resilience::Op::DeleteMessage, || {
                    $crate::resilience::Layer::inner(self).delete_message(queue, receipt)
                })
                .await
            }
            async fn delete_messages(
                &self,
                queue: &$crate::queue_name::QueueName,
                receipts: &[$crate::message::ReceiptHandle],
            ) -> $crate::error::Result<$crate::service::DeleteOutcome> {
                self.run($crate::resilience::Op::DeleteMessages, || {
                    $crate::resilience::Layer::inner(self).delete_messages(queue, receipts)
                })
                .await
            }
            async fn change_message_visibility(
                &self,
                queue: &$crate::queue_name::QueueName,
                receipt: &$crate::message::ReceiptHandle,
                visibility_timeout: std::time::Duration,
            ) -> $crate::error::Result<()> {
                self.run($crate::resilience::Op::ChangeVisibility, || {
                    $crate::resilience::Layer::inner(self)
                        .change_message_visibility(queue, receipt, visibility_timeout)
                })
                .await
            }
            async fn dead_letter_message(
                &self,
                queue: &$crate::queue_name::QueueName,
                receipt: &$crate::message::ReceiptHandle,
                reason: &str,
            ) -> $crate::error::Result<()> {
                self.run($crate::resilience::Op::DeadLetter, || {
                    $crate::resilience::Layer::inner(self).dead_letter_message(queue, receipt, reason)
                })
                .await
            }
            fn dead_letter_queue_name(
                &self,
                queue: &$crate::queue_name::QueueName,
            ) -> $crate::error::Result<$crate::queue_name::QueueName> {
                $crate::resilience::Layer::inner(self).dead_letter_queue_name(queue)
            }
            async fn redrive_dead_letters(
                &self,
                queue: &$crate::queue_name::QueueName,
                max_messages: usize,
            ) -> $crate::error::Result<u64> {
                self.run($crate::resilience::Op::Redrive, || {
                    $crate::resilience::Layer::inner(self).redrive_dead_letters(queue, max_messages)
                })
                .await
            }
            async fn get_queue_stats(
                &self,
                queue: &$crate::queue_name::QueueName,
            ) -> $crate::error::Result<$crate::service::QueueStats> {
                self.run($crate::resilience::Op::Stats, || $crate::resilience::Layer::inner(self).get_queue_stats(queue))
                    .await
            }
            async fn purge_queue(
                &self,
                queue: &$crate::queue_name::QueueName,
            ) -> $crate::error::Result<u64> {
                self.run($crate::resilience::Op::Purge, || $crate::resilience::Layer::inner(self).purge_queue(queue))
                    .await
            }
            async fn delete_queue(
                &self,
                queue: &$crate::queue_name::QueueName,
            ) -> $crate::error::Result<()> {
                self.run($crate::resilience::Op::DeleteQueue, || $crate::resilience::Layer::inner(self).delete_queue(queue))
                    .await
            }
            async fn wait_for_messages(
                &self,
                queue: &$crate::queue_name::QueueName,
                max_wait: std::time::Duration,
            ) {
                $crate::resilience::Layer::inner(self).wait_for_messages(queue, max_wait).await
            }
            fn native_consumer_stream(
                &self,
                queue: &$crate::queue_name::QueueName,
                options: &$crate::service::ConsumerOptions,
            ) -> Option<$crate::service::MessageStream> {
                $crate::resilience::Layer::inner(self).native_consumer_stream(queue, options)
            }
            fn pgmq(&self) -> Option<&dyn $crate::service::PgmqExtensions> {
                $crate::resilience::Layer::inner(self).pgmq()
            }
            fn amqp(&self) -> Option<&dyn $crate::service::AmqpExtensions> {
                $crate::resilience::Layer::inner(self).amqp()
            }
        }
    };
}
pub(crate) use layered_service;
