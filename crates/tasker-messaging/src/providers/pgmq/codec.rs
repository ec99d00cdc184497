//! A message to a pgmq row and back: how a payload is stored (`classify`, see the module docs
//! of `mod.rs`), a batch bound as one array per column (`Encoded`), and a leased row decoded
//! into a [`ReceivedMessage`] (`decode_row`). Compact JSON's key order is `key_order.rs`.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::sql::{KIND_BASE64, KIND_COMPACT, KIND_JSON, KIND_TEXT};
use super::{key_order, PgmqMessageService, MAX_TIMER_MS};
use crate::error::{MessagingError, Result};
use crate::message::{
    CorrelationId, DeadLetterInfo, MessageId, OutgoingMessage, QueuedMessageMetadata,
    ReceiptHandle, ReceivedMessage,
};
use crate::queue_name::QueueName;

/// A lease or delay in whole milliseconds, as our statements take them.
#[inline]
pub(super) fn duration_ms(d: Duration) -> i64 {
    // Rounded up: a lease is never shorter than asked.
    let ms = d.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).unwrap_or(i64::MAX).min(MAX_TIMER_MS)
}

/// How a payload is stored (see the module docs): body, kind, and for compact JSON the key
/// order that rebuilds it. Text bodies borrow the payload (bound as is, never copied).
fn classify(payload: &[u8]) -> (Cow<'_, str>, i16, Option<String>) {
    match std::str::from_utf8(payload) {
        // jsonb refuses \u0000 and PostgreSQL text refuses NUL: those go as base64.
        Ok(text) if !text.contains('\0') => {
            if text.contains("\\u0000") {
                return (Cow::Borrowed(text), KIND_TEXT, None);
            }
            if let Some(order) = key_order::compact_key_order(text) {
                return (Cow::Borrowed(text), KIND_COMPACT, Some(order));
            }
            let is_json = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            (
                Cow::Borrowed(text),
                if is_json { KIND_JSON } else { KIND_TEXT },
                None,
            )
        }
        _ => (
            Cow::Owned(base64::engine::general_purpose::STANDARD.encode(payload)),
            KIND_BASE64,
            None,
        ),
    }
}

/// A batch ready to bind: one array per column, borrowing the messages' payloads.
#[derive(Default)]
pub(super) struct Encoded<'a> {
    pub(super) bodies: Vec<Cow<'a, str>>,
    pub(super) kinds: Vec<i16>,
    pub(super) ids: Vec<Uuid>,
    pub(super) correlation_ids: Vec<Option<Uuid>>,
    pub(super) delays_ms: Vec<i64>,
    pub(super) key_orders: Vec<Option<String>>,
}

/// A leased row we could not turn into a message.
pub(super) struct Undecodable {
    pub(super) msg_id: i64,
    pub(super) read_ct: i32,
    pub(super) error: String,
}

/// What a row's headers say, for the rows that have any (most of ours have none): written
/// by another client, a dead-lettered or redriven message, a payload stored as text, base64
/// or an exact copy, or a row from before the id columns (ids and key order as headers).
#[derive(Default)]
struct HeaderFields {
    encoding: Option<String>,
    exact_payload: Option<String>,
    key_order: Option<String>,
    message_id: Option<Uuid>,
    correlation_id: Option<Uuid>,
    origin: Option<(String, String)>,
    dead_letter: Option<serde_json::Value>,
}

impl HeaderFields {
    /// Headers that are not a JSON object (another client may write anything) say nothing.
    fn parse(text: &str) -> Self {
        let Ok(serde_json::Value::Object(mut h)) = serde_json::from_str(text) else {
            return HeaderFields::default();
        };
        let mut take_str = |key: &str| match h.remove(key) {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        };
        let encoding = take_str("tasker_payload_encoding");
        let exact_payload = take_str("tasker_payload");
        let key_order = take_str("tasker_key_order");
        let message_id = take_str("tasker_message_id").and_then(|s| Uuid::from_str(&s).ok());
        let correlation_id =
            take_str("tasker_correlation_id").and_then(|s| Uuid::from_str(&s).ok());
        // ->> in SQL: strings unquoted, numbers as written.
        let scalar = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let origin = match h.get("tasker_origin") {
            Some(serde_json::Value::Array(a)) if a.len() >= 2 => scalar(&a[0]).zip(scalar(&a[1])),
            _ => None,
        };
        HeaderFields {
            encoding,
            exact_payload,
            key_order,
            message_id,
            correlation_id,
            origin,
            dead_letter: h.remove("tasker_dead_letter"),
        }
    }
}

/// Columns of [`QueueSql::receive`].
pub(super) mod col {
    pub const MSG_ID: usize = 0;
    pub const READ_CT: usize = 1;
    pub const ENQUEUED_AT: usize = 2;
    pub const VT: usize = 3;
    pub const MESSAGE: usize = 4;
    pub const HEADERS: usize = 5;
    pub const MESSAGE_ID: usize = 6;
    pub const CORRELATION_ID: usize = 7;
    pub const KEY_ORDER: usize = 8;
    pub const OVER: usize = 9;
}

pub(super) fn decode_row(
    queue: &QueueName,
    tag: u32,
    row: &PgRow,
    msg_id: i64,
) -> std::result::Result<ReceivedMessage, Undecodable> {
    let read_ct: i32 = row.try_get(col::READ_CT).unwrap_or_default();
    let undecodable = |error: String| Undecodable {
        msg_id,
        read_ct,
        error,
    };
    let column = |e: sqlx::Error| undecodable(format!("bad column: {e}"));
    let enqueued_at: DateTime<Utc> = row.try_get(col::ENQUEUED_AT).map_err(column)?;
    let vt: DateTime<Utc> = row.try_get(col::VT).map_err(column)?;
    // Text borrowed from the row: one allocation per message (the payload).
    let message: Option<&str> = row.try_get(col::MESSAGE).map_err(column)?;
    let headers: Option<&str> = row.try_get(col::HEADERS).map_err(column)?;
    let id_column: Option<Uuid> = row.try_get(col::MESSAGE_ID).map_err(column)?;
    let correlation_column: Option<Uuid> = row.try_get(col::CORRELATION_ID).map_err(column)?;
    let key_order_column: Option<&str> = row.try_get(col::KEY_ORDER).map_err(column)?;
    let h = headers.map(HeaderFields::parse).unwrap_or_default();

    // jsonb's text of the document; NULL only if another client stored SQL NULL.
    let text = message.unwrap_or("null");
    let json_string = |what: &str| {
        serde_json::from_str::<String>(text)
            .map_err(|e| undecodable(format!("{what} payload is not a JSON string: {e}")))
    };
    let payload = match h.encoding.as_deref() {
        None => match (
            &h.exact_payload,
            key_order_column.or(h.key_order.as_deref()),
        ) {
            (Some(exact), _) => Bytes::copy_from_slice(exact.as_bytes()),
            (None, Some(order)) => key_order::rebuild_compact(text, Some(order))
                .map(Bytes::from)
                .map_err(|e| undecodable(format!("cannot rebuild the payload: {e}")))?,
            (None, None) => Bytes::copy_from_slice(text.as_bytes()),
        },
        Some("text") => Bytes::from(json_string("text")?),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(json_string("base64")?.as_bytes())
            .map(Bytes::from)
            .map_err(|e| undecodable(format!("payload is not valid base64: {e}")))?,
        Some(other) => {
            return Err(undecodable(format!(
                "unknown tasker_payload_encoding {other:?}"
            )));
        }
    };
    let message_id = match id_column.or(h.message_id) {
        Some(id) => MessageId(id),
        None => match &h.origin {
            Some((origin_queue, origin_id)) => MessageId::derived(origin_queue, origin_id),
            None => MessageId::derived(queue.as_str(), &msg_id.to_string()),
        },
    };
    let correlation_id = correlation_column.or(h.correlation_id).map(CorrelationId);
    let dead_letter = h
        .dead_letter
        .and_then(|value| match serde_json::from_value::<DeadLetterInfo>(value) {
            Ok(info) => Some(Box::new(info)),
            Err(e) => {
                tracing::warn!(queue = %queue, msg_id, error = %e, "ignoring a malformed tasker_dead_letter header");
                None
            }
        });
    Ok(ReceivedMessage {
        payload,
        metadata: QueuedMessageMetadata {
            message_id,
            correlation_id,
            receipt_handle: ReceiptHandle::from_pair(
                msg_id as u64,
                (u64::from(tag) << 32) | u64::from(read_ct as u32),
            ),
            enqueued_at,
            receive_count: read_ct.max(0) as u32,
            visibility_timeout_expires: Some(vt),
            dead_letter,
        },
    })
}

impl PgmqMessageService {
    #[inline]
    fn check_payload(&self, size: usize) -> Result<()> {
        if size > self.settings.max_payload_bytes {
            return Err(MessagingError::PayloadTooLarge {
                size,
                max: self.settings.max_payload_bytes,
            });
        }
        Ok(())
    }

    pub(super) fn encode<'a>(&self, messages: &'a [OutgoingMessage]) -> Result<Encoded<'a>> {
        let n = messages.len();
        let mut out = Encoded {
            bodies: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            correlation_ids: Vec::with_capacity(n),
            delays_ms: Vec::with_capacity(n),
            key_orders: Vec::with_capacity(n),
        };
        for m in messages {
            self.check_payload(m.payload.len())?;
            let (body, kind, key_order) = classify(&m.payload);
            out.bodies.push(body);
            out.kinds.push(kind);
            out.key_orders.push(key_order);
            out.ids.push(m.message_id.0);
            out.correlation_ids.push(m.correlation_id.map(|c| c.0));
            out.delays_ms.push(duration_ms(m.delay));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_kinds() {
        assert_eq!(classify(br#"{"a":1}"#).1, KIND_COMPACT);
        assert_eq!(classify(br#"{"a": 1}"#).1, KIND_JSON);
        assert_eq!(classify(b"plain text").1, KIND_TEXT);
        assert_eq!(classify(br#""\u0000""#).1, KIND_TEXT);
        assert_eq!(classify(&[0xff, 0x00, 0x01]).1, KIND_BASE64);
        assert_eq!(classify(b"nul\0inside").1, KIND_BASE64);
    }

    #[test]
    fn timers_round_up_to_milliseconds_and_stay_in_range() {
        assert_eq!(duration_ms(Duration::from_micros(1)), 1);
        assert_eq!(duration_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(duration_ms(Duration::MAX), MAX_TIMER_MS);
    }
}
