//! Providers, one folder each, all laid out the same way: a `<Name>MessageService`
//! implementing [`crate::MessagingService`] in `mod.rs`, and the same files beside it for the
//! same roles (settings, connection, codec, errors, receipts, send, receive, admin,
//! extensions). docs/providers.md describes the template and how to add a provider.

#[cfg(feature = "in-memory")]
pub mod in_memory;

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "pgmq")]
pub mod pgmq;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqs")]
pub mod sqs;
