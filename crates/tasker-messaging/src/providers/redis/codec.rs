//! A message to the hash `<base>m:<seq>` and back.
//!
//! Fields: `id` (the message id as UUID text), `cid` (correlation id, absent when none), `at`
//! (enqueue time, ms since the epoch, server clock), `rc` (receive count), `tok` (the current
//! delivery's token), `body` (the payload bytes, exactly), and on a dead letter `dls` (source
//! queue), `dlk` (`max_receive_count_exceeded`, `rejected`), `dlr` (the limit or the reason),
//! `dlc` (receive count then), `dla` (when, ms), `dlo` (first enqueue time, ms). A message
//! written by another client that lacks an id gets a stable derived one; nothing is dropped.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::Value;

use crate::message::{
    CorrelationId, DeadLetterInfo, DeadLetterReason, MessageId, QueuedMessageMetadata,
    ReceiptHandle, ReceivedMessage,
};
use crate::queue_name::QueueName;

/// The receipt of one delivery: (sequence, queue tag << 32 | token mod 2^32). The tag is the
/// queue incarnation's random 32-bit number, so a receipt names its queue.
#[inline]
pub(super) fn receipt(seq: u64, tag: u32, token: u64) -> ReceiptHandle {
    ReceiptHandle::from_pair(seq, (u64::from(tag) << 32) | (token & 0xffff_ffff))
}

/// (sequence, tag, token mod 2^32) of a receipt, or `None` when it is not one of ours.
#[inline]
pub(super) fn receipt_parts(r: &ReceiptHandle) -> Option<(u64, u32, u32)> {
    let (seq, b) = r.as_pair()?;
    if seq == 0 {
        return None;
    }
    Some((seq, (b >> 32) as u32, (b & 0xffff_ffff) as u32))
}

#[inline]
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

#[inline]
fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

#[inline]
fn millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now)
}

/// The reply of `scripts::RECEIVE` as received messages.
pub(super) fn decode_batch(
    queue: &QueueName,
    reply: Value,
    visibility: Duration,
) -> Option<Vec<ReceivedMessage>> {
    let Value::Array(items) = reply else {
        return None;
    };
    let mut items = items.into_iter();
    let now = int(&items.next()?)?;
    let tag = int(&items.next()?)? as u32;
    let expires = millis(now.saturating_add(visibility.as_millis() as i64));
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(fields) = item else {
            return None;
        };
        out.push(decode_one(queue, fields, tag, expires)?);
    }
    Some(out)
}

fn decode_one(
    queue: &QueueName,
    mut f: Vec<Value>,
    tag: u32,
    expires: DateTime<Utc>,
) -> Option<ReceivedMessage> {
    if f.len() < 13 {
        return None;
    }
    let seq = int(&f[0])? as u64;
    let token = int(&f[1])? as u64;
    let receive_count = int(&f[2]).unwrap_or(1).clamp(0, i64::from(u32::MAX)) as u32;
    let message_id = text(&f[3])
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| MessageId::derived(queue.as_str(), &seq.to_string()));
    let correlation_id = text(&f[4]).and_then(|t| t.parse::<CorrelationId>().ok());
    let enqueued_at = int(&f[5]).map(millis).unwrap_or_else(Utc::now);
    let payload = match std::mem::replace(&mut f[6], Value::Nil) {
        Value::BulkString(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    let dead_letter = text(&f[7])
        .and_then(|src| QueueName::new(src).ok())
        .map(|source_queue| {
            let detail = text(&f[9]).unwrap_or("").to_owned();
            let reason = match text(&f[8]) {
                Some("max_receive_count_exceeded") => DeadLetterReason::MaxReceiveCountExceeded {
                    max_receive_count: detail.parse().unwrap_or(0),
                },
                _ => DeadLetterReason::Rejected { reason: detail },
            };
            Box::new(DeadLetterInfo {
                source_queue,
                reason,
                receive_count: int(&f[10]).unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32,
                dead_lettered_at: int(&f[11]).map(millis).unwrap_or(enqueued_at),
                original_enqueued_at: int(&f[12]).map(millis).unwrap_or(enqueued_at),
            })
        });
    Some(ReceivedMessage {
        payload,
        metadata: QueuedMessageMetadata {
            message_id,
            correlation_id,
            receipt_handle: receipt(seq, tag, token),
            enqueued_at,
            receive_count,
            visibility_timeout_expires: Some(expires),
            dead_letter,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_through_text() {
        let r = receipt(42, 0xdead_beef, (1 << 40) + 7);
        let parsed = ReceiptHandle::parse(&r.to_string()).unwrap();
        assert_eq!(receipt_parts(&parsed), Some((42, 0xdead_beef, 7)));
        assert_eq!(receipt_parts(&ReceiptHandle::from_text("x")), None);
        assert_eq!(receipt_parts(&ReceiptHandle::from_pair(0, 1)), None);
    }

    #[test]
    fn a_message_without_an_id_gets_a_stable_one() {
        let q = QueueName::new("q").unwrap();
        let row = |id: Value| {
            Value::Array(vec![
                Value::Int(1_700_000_000_000),
                Value::BulkString(b"7".to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"3".to_vec()),
                    Value::Int(9),
                    Value::Int(1),
                    id,
                    Value::Nil,
                    Value::BulkString(b"1700000000000".to_vec()),
                    Value::BulkString(vec![0, 159, 146, 150]),
                    Value::Nil,
                    Value::Nil,
                    Value::Nil,
                    Value::Nil,
                    Value::Nil,
                    Value::Nil,
                ]),
            ])
        };
        let a = decode_batch(&q, row(Value::Nil), Duration::from_secs(1)).unwrap();
        let b = decode_batch(&q, row(Value::Nil), Duration::from_secs(1)).unwrap();
        assert_eq!(a[0].metadata.message_id, b[0].metadata.message_id);
        assert_eq!(&a[0].payload[..], &[0, 159, 146, 150]);
        assert_eq!(receipt_parts(a[0].receipt()), Some((3, 7, 9)));
    }
}
