//! A message to SQS and back: the payload as the body (as is when it is text SQS accepts,
//! base64 otherwise, said by an attribute), our ids and dead-letter record as message
//! attributes (plain SQS clients see them), enqueue time and receive count from SQS's own
//! system attributes (`SentTimestamp`, `ApproximateReceiveCount`).

use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};

use crate::message::{
    CorrelationId, DeadLetterInfo, MessageId, QueuedMessageMetadata, ReceiptHandle, ReceivedMessage,
};

/// Our message id (a UUID), on every message the provider sends.
pub const ATTR_MESSAGE_ID: &str = "tasker-message-id";
/// The correlation id, when the message has one.
pub const ATTR_CORRELATION_ID: &str = "tasker-correlation-id";
/// How the body holds the payload: absent = the text itself, `base64`, or `empty`.
pub const ATTR_ENCODING: &str = "tasker-encoding";
/// On a dead letter the provider moved: its [`DeadLetterInfo`] as JSON.
pub const ATTR_DEAD_LETTER: &str = "tasker-dead-letter";

/// What separates the queue's SQS name from SQS's receipt handle in our receipts.
pub(super) const RECEIPT_SEPARATOR: char = ' ';

/// The body and encoding attribute for a payload.
pub(super) fn encode_body(payload: &[u8]) -> (String, Option<&'static str>) {
    if payload.is_empty() {
        return ("-".to_owned(), Some("empty"));
    }
    match std::str::from_utf8(payload) {
        Ok(text) if text.chars().all(sqs_char) => (text.to_owned(), None),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(payload),
            Some("base64"),
        ),
    }
}

/// Characters SQS accepts in a body: #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD |
/// #x10000 to #x10FFFF (a Rust `char` is never a surrogate).
#[inline]
fn sqs_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// The encoded size of a payload as SQS counts it (body bytes).
#[inline]
pub(super) fn encoded_len(payload: &[u8]) -> usize {
    if payload.is_empty() {
        1
    } else if std::str::from_utf8(payload).is_ok_and(|t| t.chars().all(sqs_char)) {
        payload.len()
    } else {
        payload.len().div_ceil(3) * 4
    }
}

/// A `String` message attribute. The builder fails only without a data type, which is set.
#[inline]
pub(super) fn string_attr(
    value: impl Into<String>,
) -> std::result::Result<MessageAttributeValue, aws_sdk_sqs::error::BuildError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
}

/// What the queue a message came from says about its dead letters.
pub(super) struct DecodeContext<'a> {
    /// The queue's name (for derived ids).
    pub queue: &'a str,
    /// The queue's SQS name, for receipts.
    pub sqs_name: &'a str,
    /// When the queue is a dead-letter queue: the source and its receive limit, to describe
    /// a message SQS moved there itself.
    pub native_source: Option<(&'a crate::queue_name::QueueName, u32)>,
    pub visibility: Duration,
}

fn attr<'m>(m: &'m Message, name: &str) -> Option<&'m str> {
    m.message_attributes
        .as_ref()?
        .get(name)?
        .string_value
        .as_deref()
}

fn system<'m>(m: &'m Message, name: &MessageSystemAttributeName) -> Option<&'m str> {
    m.attributes.as_ref()?.get(name).map(String::as_str)
}

fn millis(ms: Option<&str>) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms?.parse().ok()?).single()
}

/// An SQS message as ours. `None` when SQS sent no receipt handle (never in practice).
pub(super) fn decode(m: Message, ctx: &DecodeContext<'_>) -> Option<ReceivedMessage> {
    let handle = m.receipt_handle.as_deref()?;
    let mut receipt = String::with_capacity(ctx.sqs_name.len() + 1 + handle.len());
    receipt.push_str(ctx.sqs_name);
    receipt.push(RECEIPT_SEPARATOR);
    receipt.push_str(handle);

    let body = m.body.as_deref().unwrap_or("");
    let payload = match attr(&m, ATTR_ENCODING) {
        Some("empty") => Bytes::new(),
        Some("base64") => match base64::engine::general_purpose::STANDARD.decode(body) {
            Ok(bytes) => Bytes::from(bytes),
            // Not ours after all: the body is the payload, never dropped.
            Err(_) => Bytes::copy_from_slice(body.as_bytes()),
        },
        _ => Bytes::copy_from_slice(body.as_bytes()),
    };
    let message_id = attr(&m, ATTR_MESSAGE_ID)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            MessageId::derived(ctx.queue, m.message_id.as_deref().unwrap_or(handle))
        });
    let correlation_id = attr(&m, ATTR_CORRELATION_ID)
        .and_then(|s| s.parse::<uuid::Uuid>().ok())
        .map(CorrelationId);
    let now = Utc::now();
    let enqueued_at = millis(system(&m, &MessageSystemAttributeName::SentTimestamp)).unwrap_or(now);
    let receive_count = system(&m, &MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let dead_letter = match attr(&m, ATTR_DEAD_LETTER) {
        Some(json) => serde_json::from_str::<DeadLetterInfo>(json)
            .ok()
            .map(Box::new),
        None => ctx.native_source.map(|(source, max)| {
            Box::new(DeadLetterInfo {
                source_queue: source.clone(),
                reason: crate::message::DeadLetterReason::MaxReceiveCountExceeded {
                    max_receive_count: max,
                },
                receive_count: max,
                // SQS records no time of the move; the first receive here is the best bound.
                dead_lettered_at: now,
                original_enqueued_at: enqueued_at,
            })
        }),
    };
    let expires = chrono::Duration::from_std(ctx.visibility)
        .ok()
        .map(|d| now + d);
    Some(ReceivedMessage {
        payload,
        metadata: QueuedMessageMetadata {
            message_id,
            correlation_id,
            receipt_handle: ReceiptHandle::from_text(receipt),
            enqueued_at,
            receive_count,
            visibility_timeout_expires: expires,
            dead_letter,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stays_text_and_the_rest_is_base64() {
        assert_eq!(encode_body(b"{\"a\": 1}").1, None);
        assert_eq!(encode_body(b"tab\tnl\n").1, None);
        assert_eq!(encode_body(b"nul\0").1, Some("base64"));
        assert_eq!(encode_body(&[0xff, 0xfe]).1, Some("base64"));
        assert_eq!(encode_body(b"").1, Some("empty"));
        for p in [&b"abc"[..], b"\0\x01", b"", "h\u{e9}".as_bytes()] {
            assert_eq!(encoded_len(p), encode_body(p).0.len());
        }
    }
}
