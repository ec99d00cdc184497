//! Resilience: layers around any `Arc<dyn MessagingService>`, never code inside providers.
//!
//! Every mechanism is a [`Layer`]: it sees each call as a [`Request`] and passes it on with
//! [`Next::run`]; [`Layered`] makes a layer plus the service below it a `MessagingService`
//! again, and [`ServiceStack`] composes layers in one place, from the provider outwards. The
//! recommended stack (see `docs/resilience.md`):
//!
//! ```text
//! ServiceStack::new(provider)
//!     .layer(BackpressureLayer)     innermost: shrinks receives and stretches waits
//!     .layer(CircuitBreakerLayer)   fails fast while the backend is down
//!     .layer(RetryLayer)            repeats safe operations; stops when the breaker opens
//!     .layer(MetricsLayer)          outermost: what callers see
//! ```
//!
//! Retry sits outside the breaker so that each attempt passes the breaker and, once it opens,
//! the next attempt fails fast with [`MessagingError::CircuitOpen`], which retry never
//! repeats; retry also asks [`Next::ready`] before sleeping, so it stops at once.
//!
//! * [`layer`], [`layered`], [`stack`]: the layer model.
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
pub mod breaker_layer;
pub mod budget;
pub mod circuit_breaker;
pub mod fallback;
pub mod fault;
pub mod health;
pub mod layer;
pub mod layered;
pub mod migrate;
pub mod retry;
pub mod shadow;
pub mod stack;

use std::fmt;

use serde::Serialize;

pub use backpressure::{
    BackpressureLayer, BackpressureService, BackpressureState, GlobalBackpressureController,
    PressureLevel, PressureSample,
};
pub use breaker_layer::{CircuitBreakerLayer, CircuitBreakerService};
pub use budget::{initialize_within_budget, BudgetReservation, BudgetSnapshot, ResourceBudget};
pub use circuit_breaker::{
    CallPermit, CircuitBreaker, CircuitBreakerManager, CircuitBreakerSnapshot, CircuitState,
};
pub use fallback::{
    build_service_with_fallback, start_with_fallback, FallbackLayer, FallbackService,
};
pub use fault::{FaultControl, FaultInjectingService, FaultLayer};
pub use health::{
    HealthMonitor, HealthPolicy, HealthSignals, HealthState, HealthStateMachine,
    InvalidHealthTransition,
};
pub use layer::{
    AmqpRequest, Layer, LayerFuture, Next, PgmqRequest, Request, Response, StreamInfo,
};
pub use layered::Layered;
pub use migrate::{migrate_queue, MigrationOptions, MigrationProgress, MigrationReport};
pub use retry::{is_idempotent, RetryLayer, RetryService};
pub use shadow::{DivergenceReport, ShadowLayer, ShadowService};
pub use stack::ServiceStack;

#[allow(unused_imports)]
use crate::error::MessagingError;

/// The operations of [`MessagingService`](crate::MessagingService) that reach the backend, as layers see them.
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
    Shutdown,
    WaitForMessages,
    PgmqCreateQueueWithVt,
    PgmqReadBatch,
    PgmqArchive,
    PgmqMetrics,
    AmqpDeclareExchange,
    AmqpBindQueue,
    AmqpPublish,
    AmqpSetQos,
    AmqpConsumerStream,
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
            Op::Shutdown => "shutdown",
            Op::WaitForMessages => "wait_for_messages",
            Op::PgmqCreateQueueWithVt => "pgmq_create_queue_with_vt",
            Op::PgmqReadBatch => "pgmq_read_batch",
            Op::PgmqArchive => "pgmq_archive_messages",
            Op::PgmqMetrics => "pgmq_get_metrics",
            Op::AmqpDeclareExchange => "amqp_declare_exchange",
            Op::AmqpBindQueue => "amqp_bind_queue",
            Op::AmqpPublish => "amqp_publish_to_exchange",
            Op::AmqpSetQos => "amqp_set_qos",
            Op::AmqpConsumerStream => "amqp_create_consumer_stream",
        }
    }

    /// Whether breakers guard this operation and faults hit it: every call except waits (no
    /// outcome to judge) and shutdown (must always run).
    pub fn is_guarded(self) -> bool {
        !matches!(self, Op::WaitForMessages | Op::Shutdown)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
