//! Providers, one module each, all laid out the same way: a `<Name>MessageService`
//! implementing [`crate::MessagingService`], its settings, and its extension traits.

#[cfg(feature = "in-memory")]
pub mod in_memory;

#[cfg(feature = "pgmq")]
pub mod pgmq;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
