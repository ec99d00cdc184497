//! # tasker-messaging
//!
//! One pull-based queue interface for a workflow orchestrator, over many backends (PGMQ on
//! PostgreSQL, RabbitMQ, Redis, SQS, NATS JetStream, Kafka, and an embedded in-memory queue),
//! chosen at runtime from configuration.
//!
//! * [`MessagingService`] is the object-safe contract, used as `Arc<dyn MessagingService>`.
//!   It moves payload bytes with the metadata every provider carries (message id, correlation
//!   id, receive count, lease).
//! * [`MessagingServiceExt`] adds typed send and receive for serde types, and [`ConsumerExt`]
//!   a consumer stream that waits without spinning.
//! * Behaviour around a service (retry, circuit breaker, metrics, your own) is a [`Layer`]:
//!   it sees every call as a [`Request`]; [`ServiceStack`] puts layers around a provider.
//! * [`Capabilities`] says what a provider supports; provider-specific operations
//!   ([`PgmqExtensions`], [`AmqpExtensions`]) are reached through [`MessagingService::pgmq`] and
//!   [`MessagingService::amqp`], never by downcasting.
//! * The contract is written in `docs/semantics.md` and checked by the one conformance suite
//!   (feature `conformance`) that every provider instantiates.
//!
//! ```
//! use std::time::Duration;
//! use tasker_messaging::{build_service, MessagingConfig, MessagingServiceExt, QueueName, StepMessage};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> tasker_messaging::Result<()> {
//! let service = build_service(&MessagingConfig::default()).await?; // in-memory by default
//! let queue = QueueName::new("fulfillment_queue")?;
//! service.create_queue(&queue).await?;
//! service.send_message(&queue, &StepMessage::random()).await?;
//! for msg in service.receive_messages::<StepMessage>(&queue, 10, Duration::from_secs(30)).await? {
//!     // ... run the step ...
//!     service.ack(&queue, &msg).await?;
//! }
//! # Ok(()) }
//! ```

// Modules are private: the crate root re-exports what users need, so a path never names an
// internal file. `resilience` stays a public namespace for the layers and their pieces (as
// tower keeps `tower::layer`), and `conformance` is the suite, behind its feature.
mod config;
mod consumer;
mod error;
mod factory;
mod message;
mod observability;
mod providers;
mod queue_name;
pub mod resilience;
mod resources;
mod routing;
mod secret;
mod service;
mod typed;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use config::{
    BackpressureConfig, CircuitBreakerConfig, ConnectionConfig, FallbackConfig, MessagingConfig,
    QueueConfig, RabbitMqQueueType, ResourceValidationConfig, RetryPolicy,
};
pub use error::{ErrorClass, MessagingError, Result};
pub use factory::{
    available_providers, build_service, build_service_with_limits, configured_stack, create_service,
};
pub use message::{
    CorrelationId, DeadLetterInfo, DeadLetterReason, MessageId, OutgoingMessage, QueueMessage,
    QueuedMessage, QueuedMessageMetadata, ReceiptHandle, ReceivedMessage, StepMessage,
};
pub use observability::{MetricsLayer, MetricsService};
pub use queue_name::QueueName;
pub use resilience::{Layer, LayerFuture, Layered, Next, Request, Response, ServiceStack};
pub use resources::{ResourceRequirements, SystemResourceLimits};
pub use routing::{ExecutorType, MessageRouter, NamespaceQueueRouter};
pub use secret::SecretUrl;
pub use service::{
    AmqpExtensions, Capabilities, Capability, ConsumerOptions, DeleteOutcome, ExchangeKind,
    MessageStream, MessagingHealth, MessagingService, PgmqExtensions, ProviderKind, QueueOptions,
    QueueStats,
};
pub use typed::{ConsumerExt, MessagingServiceExt, UndecodableMessage};

#[cfg(feature = "in-memory")]
pub use providers::in_memory::{InMemoryMessageService, InMemorySettings};

#[cfg(feature = "kafka")]
pub use providers::kafka::{KafkaMessageService, KafkaSettings};
#[cfg(feature = "nats")]
pub use providers::nats::{NatsMessageService, NatsSettings};
#[cfg(feature = "pgmq")]
pub use providers::pgmq::{InstallOutcome, PgmqInstallation, PgmqMessageService, PgmqSettings};
#[cfg(feature = "rabbitmq")]
pub use providers::rabbitmq::{RabbitMqMessageService, RabbitMqSettings, RabbitMqTls};
#[cfg(feature = "redis")]
pub use providers::redis::{RedisMessageService, RedisPersistence, RedisSettings};
#[cfg(feature = "sqs")]
pub use providers::sqs::{
    SqsCredentials, SqsMessageGroups, SqsMessageService, SqsSettings, ATTR_CORRELATION_ID,
    ATTR_DEAD_LETTER, ATTR_ENCODING, ATTR_MESSAGE_ID, SQS_MAX_MESSAGE_BYTES, SQS_MAX_PAYLOAD_BYTES,
};

/// Compiles the README's examples as doc tests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
