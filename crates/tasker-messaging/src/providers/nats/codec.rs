//! A message to JetStream and back: the payload is the message body, byte for byte; the
//! message id, correlation id and dead-letter record travel in NATS headers; the enqueue time
//! is the stream's own timestamp and the receive count the server's delivery count.
//!
//! Headers (plain ASCII, readable by any NATS client):
//!
//! * `Tasker-Id`: the message id (a UUID). A message without it (sent by another client) gets
//!   a stable id derived from its queue and stream sequence.
//! * `Tasker-Correlation`: the correlation id, when there is one.
//! * `Tasker-Dead-Letter`: on dead letters only, the [`DeadLetterInfo`] as one line of JSON.
//!
//! `Nats-Msg-Id` is deliberately not used: JetStream would drop a redriven or migrated
//! message as a duplicate of the original inside the stream's duplicate window.

use async_nats::header::HeaderMap;
use async_nats::Message;
use chrono::{DateTime, Utc};

use crate::message::{
    CorrelationId, DeadLetterInfo, MessageId, OutgoingMessage, QueuedMessageMetadata,
    ReceiptHandle, ReceivedMessage,
};
use crate::queue_name::QueueName;

pub(super) const ID: &str = "Tasker-Id";
pub(super) const CORRELATION: &str = "Tasker-Correlation";
pub(super) const DEAD_LETTER: &str = "Tasker-Dead-Letter";

/// The headers of an outgoing message (its ids).
#[inline]
pub(super) fn headers(message: &OutgoingMessage) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut buf = uuid::Uuid::encode_buffer();
    h.insert(
        ID,
        &*message.message_id.0.hyphenated().encode_lower(&mut buf),
    );
    if let Some(c) = message.correlation_id {
        h.insert(CORRELATION, &*c.0.hyphenated().encode_lower(&mut buf));
    }
    h
}

/// What the reply subject of a delivery says (`$JS.ACK.<stream>.<consumer>.<delivered>.
/// <stream seq>.<consumer seq>.<timestamp>.<pending>`, or the longer form with a domain and
/// account hash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct AckMeta<'a> {
    pub stream: &'a str,
    pub consumer: &'a str,
    pub delivered: u64,
    pub stream_seq: u64,
    pub timestamp_ns: i128,
}

/// Parses an ack subject; `None` when it is not one.
pub(super) fn parse_ack_subject(subject: &str) -> Option<AckMeta<'_>> {
    let rest = subject.strip_prefix("$JS.ACK.")?;
    // No allocation: this runs for every received message and every receipt.
    let mut tokens: [&str; 10] = [""; 10];
    let mut n = 0;
    for token in rest.split('.') {
        *tokens.get_mut(n)? = token;
        n += 1;
    }
    // v1: stream consumer delivered sseq dseq ts pending (7 tokens);
    // v2: domain acchash stream consumer delivered sseq dseq ts pending [token] (9 or 10).
    let t = match n {
        7 => &tokens[..7],
        9 | 10 => &tokens[2..9],
        _ => return None,
    };
    let num = |s: &str| s.parse::<u64>().ok();
    if t[0].is_empty() || t[1].is_empty() {
        return None;
    }
    Some(AckMeta {
        stream: t[0],
        consumer: t[1],
        delivered: num(t[2])?,
        stream_seq: num(t[3])?,
        timestamp_ns: {
            num(t[4])?;
            t[5].parse::<i128>().ok()?
        },
    })
    .filter(|_| num(t[6]).is_some())
}

/// Time of a NATS nanosecond timestamp.
#[inline]
pub(super) fn time_of(ns: i128) -> DateTime<Utc> {
    let secs = (ns / 1_000_000_000) as i64;
    let nanos = (ns % 1_000_000_000) as u32;
    DateTime::from_timestamp(secs, nanos).unwrap_or_else(Utc::now)
}

#[inline]
fn header_uuid(headers: Option<&HeaderMap>, name: &str) -> Option<uuid::Uuid> {
    let value = headers?.get(name)?;
    uuid::Uuid::parse_str(value.as_str()).ok()
}

/// The dead-letter record a message carries, if it is a dead letter.
pub(super) fn dead_letter_info(headers: Option<&HeaderMap>) -> Option<Box<DeadLetterInfo>> {
    let value = headers?.get(DEAD_LETTER)?;
    serde_json::from_str(value.as_str()).ok().map(Box::new)
}

/// A delivery as the contract's message. `None` when its reply subject is not an ack subject
/// (it did not come from a JetStream consumer).
pub(super) fn decode(queue: &QueueName, message: &Message) -> Option<ReceivedMessage> {
    let reply = message.reply.as_ref()?;
    let meta = parse_ack_subject(reply.as_str())?;
    let headers = message.headers.as_ref();
    let message_id = match header_uuid(headers, ID) {
        Some(id) => MessageId(id),
        None => MessageId::derived(queue.as_str(), &meta.stream_seq.to_string()),
    };
    Some(ReceivedMessage {
        payload: message.payload.clone(),
        metadata: QueuedMessageMetadata {
            message_id,
            correlation_id: header_uuid(headers, CORRELATION).map(CorrelationId),
            receipt_handle: ReceiptHandle::from_text(reply.as_str()),
            enqueued_at: time_of(meta.timestamp_ns),
            receive_count: u32::try_from(meta.delivered).unwrap_or(u32::MAX),
            visibility_timeout_expires: None,
            dead_letter: dead_letter_info(headers),
        },
    })
}

/// The headers a dead letter (or a redriven message) is published with: the original's
/// headers, with the dead-letter record set (`Some`) or removed (`None`).
pub(super) fn moved_headers(
    original: Option<&HeaderMap>,
    info: Option<&DeadLetterInfo>,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(orig) = original {
        for (name, values) in orig.iter() {
            let name: &str = name.as_ref();
            if name.eq_ignore_ascii_case(DEAD_LETTER) || name.starts_with("Nats-") {
                continue;
            }
            for v in values {
                h.append(name, v.as_str());
            }
        }
    }
    if let Some(info) = info {
        // serde_json escapes control characters, so the record is one header line.
        if let Ok(json) = serde_json::to_string(info) {
            h.insert(DEAD_LETTER, json.as_str());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_parse_in_both_forms() {
        let v1 = parse_ack_subject("$JS.ACK.orders.tasker.3.17.20.1700000000000000000.4").unwrap();
        assert_eq!(
            (v1.stream, v1.consumer, v1.delivered, v1.stream_seq),
            ("orders", "tasker", 3, 17)
        );
        let v2 =
            parse_ack_subject("$JS.ACK.dom.hash.orders.tasker.1.2.3.1700000000000000000.0.tok")
                .unwrap();
        assert_eq!((v2.stream, v2.delivered, v2.stream_seq), ("orders", 1, 2));
        for bad in [
            "",
            "$JS.ACK.",
            "$JS.ACK.a.b.c.d.e.f.g",
            "x.y",
            "$JS.ACK.a.b.1.2.3.4",
        ] {
            assert!(parse_ack_subject(bad).is_none(), "{bad}");
        }
    }
}
