//! Messages: what goes in, what comes out, and the metadata every provider carries.
//!
//! The object-safe layer moves opaque payload bytes ([`OutgoingMessage`] in,
//! [`ReceivedMessage`] out). The typed layer ([`crate::MessagingServiceExt`]) turns a
//! [`QueueMessage`] into JSON bytes and back, giving [`QueuedMessage<T>`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{MessagingError, SerdeDirection};
use crate::queue_name::QueueName;

/// Identity of a message, assigned at send and preserved by every provider, through
/// redelivery, dead-lettering and migration between providers. Time-ordered (UUIDv7) when the
/// library assigns it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A fresh time-ordered id.
    pub fn new() -> Self {
        MessageId(Uuid::now_v7())
    }

    /// A stable id for a message that arrived without one (written by another client): the
    /// same queue and provider id always give the same message id.
    pub fn derived(queue: &str, provider_id: &str) -> Self {
        let name = format!("{queue}/{provider_id}");
        MessageId(Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()))
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl std::str::FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(MessageId(Uuid::parse_str(s)?))
    }
}

/// Ties the messages of one unit of work (a task, a request) together across queues.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CorrelationId(pub Uuid);

impl CorrelationId {
    pub fn new() -> Self {
        CorrelationId(Uuid::now_v7())
    }
}

impl Default for CorrelationId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrelationId({})", self.0)
    }
}

impl std::str::FromStr for CorrelationId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(CorrelationId(Uuid::parse_str(s)?))
    }
}

/// Names one lease on one message: what `delete_message` and `change_message_visibility` take.
///
/// Opaque to callers. Providers whose receipts are two numbers (a message id and a lease
/// generation, a delivery tag and a channel) use the compact form; others (SQS, NATS) a string.
/// The text form (`Display` / `parse`) round-trips, so a receipt can cross a process boundary
/// (the CLI, the Ruby binding).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ReceiptHandle(ReceiptRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum ReceiptRepr {
    Pair(u64, u64),
    Text(Arc<str>),
}

impl ReceiptHandle {
    /// A receipt made of two numbers, typically (message id, lease generation).
    pub fn from_pair(a: u64, b: u64) -> Self {
        ReceiptHandle(ReceiptRepr::Pair(a, b))
    }

    /// A receipt the backend issued as a string.
    pub fn from_text(text: impl Into<Arc<str>>) -> Self {
        ReceiptHandle(ReceiptRepr::Text(text.into()))
    }

    /// The two numbers of a compact receipt.
    pub fn as_pair(&self) -> Option<(u64, u64)> {
        match self.0 {
            ReceiptRepr::Pair(a, b) => Some((a, b)),
            ReceiptRepr::Text(_) => None,
        }
    }

    /// The string of a text receipt.
    pub fn as_text(&self) -> Option<&str> {
        match &self.0 {
            ReceiptRepr::Pair(..) => None,
            ReceiptRepr::Text(t) => Some(t),
        }
    }

    /// Parses the `Display` form: `<u64>.<u64>` is a pair, anything else non-empty is text.
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() {
            return None;
        }
        if let Some((a, b)) = s.split_once('.') {
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                return Some(Self::from_pair(a, b));
            }
        }
        Some(Self::from_text(s))
    }
}

impl fmt::Display for ReceiptHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ReceiptRepr::Pair(a, b) => write!(f, "{a}.{b}"),
            ReceiptRepr::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for ReceiptHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReceiptHandle({self})")
    }
}

impl Serialize for ReceiptHandle {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ReceiptHandle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ReceiptHandle::parse(&s).ok_or_else(|| serde::de::Error::custom("empty receipt handle"))
    }
}

/// A message to send: payload bytes plus the metadata every provider carries.
#[derive(Clone, Debug)]
pub struct OutgoingMessage {
    pub payload: Bytes,
    pub message_id: MessageId,
    pub correlation_id: Option<CorrelationId>,
    /// Not receivable before this much time has passed (delayed send).
    pub delay: Duration,
}

impl OutgoingMessage {
    /// A message with a fresh id, no correlation id and no delay.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        OutgoingMessage {
            payload: payload.into(),
            message_id: MessageId::new(),
            correlation_id: None,
            delay: Duration::ZERO,
        }
    }

    /// The JSON encoding of `value`, carrying its ids (see [`QueueMessage`]).
    pub fn json<T: QueueMessage>(value: &T) -> Result<Self, MessagingError> {
        let payload = serde_json::to_vec(value).map_err(|e| MessagingError::Serialization {
            direction: SerdeDirection::Encode,
            type_name: std::any::type_name::<T>(),
            message: e.to_string(),
        })?;
        Ok(OutgoingMessage {
            payload: Bytes::from(payload),
            message_id: value.message_id().unwrap_or_default(),
            correlation_id: value.correlation_id(),
            delay: Duration::ZERO,
        })
    }

    pub fn with_message_id(mut self, id: MessageId) -> Self {
        self.message_id = id;
        self
    }

    pub fn with_correlation_id(mut self, id: CorrelationId) -> Self {
        self.correlation_id = Some(id);
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// Why a message is in a dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeadLetterReason {
    /// Received `max_receive_count` times without being deleted.
    MaxReceiveCountExceeded { max_receive_count: u32 },
    /// A consumer dead-lettered it explicitly (a permanent processing error).
    Rejected { reason: String },
    /// Its payload did not decode into the type the consumer asked for.
    Undecodable { error: String },
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterReason::MaxReceiveCountExceeded { max_receive_count } => {
                write!(f, "received {max_receive_count} times without delete")
            }
            DeadLetterReason::Rejected { reason } => write!(f, "rejected: {reason}"),
            DeadLetterReason::Undecodable { error } => write!(f, "undecodable: {error}"),
        }
    }
}

/// Where a dead-lettered message came from and why. Present on messages received from a
/// dead-letter queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    pub source_queue: QueueName,
    pub reason: DeadLetterReason,
    /// Receive count on the source queue when it was dead-lettered.
    pub receive_count: u32,
    pub dead_lettered_at: DateTime<Utc>,
    /// When it was first enqueued on the source queue.
    pub original_enqueued_at: DateTime<Utc>,
}

/// Metadata of a received message (the plan's `QueuedMessageMetadata`).
#[derive(Clone, Debug)]
pub struct QueuedMessageMetadata {
    pub message_id: MessageId,
    pub correlation_id: Option<CorrelationId>,
    /// The lease: pass it to delete (ack) or change_message_visibility (nack, extend).
    pub receipt_handle: ReceiptHandle,
    /// When the message was enqueued on this queue.
    pub enqueued_at: DateTime<Utc>,
    /// 1 on the first delivery, +1 on each redelivery.
    pub receive_count: u32,
    /// When this lease ends and the message becomes receivable again, if the provider knows.
    pub visibility_timeout_expires: Option<DateTime<Utc>>,
    /// Set on messages received from a dead-letter queue.
    pub dead_letter: Option<Box<DeadLetterInfo>>,
}

/// A message as received by the object-safe layer: payload bytes and metadata.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    pub payload: Bytes,
    pub metadata: QueuedMessageMetadata,
}

impl ReceivedMessage {
    pub fn receipt(&self) -> &ReceiptHandle {
        &self.metadata.receipt_handle
    }

    /// Decodes the JSON payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, MessagingError> {
        serde_json::from_slice(&self.payload).map_err(|e| MessagingError::Serialization {
            direction: SerdeDirection::Decode,
            type_name: std::any::type_name::<T>(),
            message: e.to_string(),
        })
    }

    /// The same message as an outgoing one, ids preserved (migration, redrive).
    pub fn to_outgoing(&self) -> OutgoingMessage {
        OutgoingMessage {
            payload: self.payload.clone(),
            message_id: self.metadata.message_id,
            correlation_id: self.metadata.correlation_id,
            delay: Duration::ZERO,
        }
    }
}

/// A decoded message with its metadata (the plan's `QueuedMessage<T>`).
#[derive(Clone, Debug)]
pub struct QueuedMessage<T> {
    pub metadata: QueuedMessageMetadata,
    pub message: T,
}

impl<T> QueuedMessage<T> {
    pub fn receipt(&self) -> &ReceiptHandle {
        &self.metadata.receipt_handle
    }
}

/// A message type the typed layer can send and receive: any serde type, which may name its
/// own ids. Implementing it is one line: `impl QueueMessage for MyMessage {}`.
pub trait QueueMessage: Serialize + DeserializeOwned + Send + Sync {
    /// A short name for logs and metrics.
    fn message_type(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
    /// The id to send it under; `None` lets the library assign one.
    fn message_id(&self) -> Option<MessageId> {
        None
    }
    /// The correlation id carried as metadata.
    fn correlation_id(&self) -> Option<CorrelationId> {
        None
    }
}

impl QueueMessage for serde_json::Value {}

/// The canonical small message of the orchestrator: three UUIDs. PostgreSQL holds the state;
/// the message only says which step of which task is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StepMessage {
    pub task_uuid: Uuid,
    pub step_uuid: Uuid,
    pub correlation_id: Uuid,
}

impl StepMessage {
    pub fn new(task_uuid: Uuid, step_uuid: Uuid, correlation_id: Uuid) -> Self {
        StepMessage {
            task_uuid,
            step_uuid,
            correlation_id,
        }
    }

    /// Random ids, for tests and benchmarks.
    pub fn random() -> Self {
        StepMessage::new(Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4())
    }
}

impl QueueMessage for StepMessage {
    fn message_type(&self) -> &'static str {
        "step"
    }
    fn correlation_id(&self) -> Option<CorrelationId> {
        Some(CorrelationId(self.correlation_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_text_form_round_trips() {
        for r in [
            ReceiptHandle::from_pair(42, 7),
            ReceiptHandle::from_pair(u64::MAX, 0),
            ReceiptHandle::from_text("AQEBzj+/x=="),
            ReceiptHandle::from_text("$JS.ACK.stream.consumer.1.2.3"),
        ] {
            let text = r.to_string();
            assert_eq!(ReceiptHandle::parse(&text), Some(r.clone()), "{text}");
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<ReceiptHandle>(&json).unwrap(), r);
        }
        assert_eq!(ReceiptHandle::parse(""), None);
    }

    #[test]
    fn step_message_is_small_and_carries_its_correlation_id() {
        let m = StepMessage::random();
        let out = OutgoingMessage::json(&m).unwrap();
        assert!(out.payload.len() < 160, "{} bytes", out.payload.len());
        assert_eq!(out.correlation_id, Some(CorrelationId(m.correlation_id)));
    }

    #[test]
    fn derived_ids_are_stable() {
        assert_eq!(MessageId::derived("q", "17"), MessageId::derived("q", "17"));
        assert_ne!(MessageId::derived("q", "17"), MessageId::derived("q", "18"));
    }
}
