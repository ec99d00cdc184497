//! A message as a Kafka record and back.
//!
//! The payload is the record's value, byte for byte. The record's key is the message id (16
//! bytes), so a plain client sees it and a compacted topic would keep one copy per id.
//! `enqueued_at` is the record's timestamp (create time) unless the record is a copy (a dead
//! letter, a redriven message), which carries the original time in `tasker-enqueued-at`.
//! Headers, only when they hold something:
//!
//! * `tasker-correlation-id`: 16 bytes;
//! * `tasker-receive-count`: receives counted before the record was written (u32, big
//!   endian), on dead letters;
//! * `tasker-not-before`: a delayed send's due time (ms since the epoch, i64 big endian),
//!   honoured by the consumer;
//! * `tasker-enqueued-at`: ms since the epoch, on copies;
//! * `tasker-dead-letter`: the [`DeadLetterInfo`] as JSON, on dead letters.
//!
//! A record written by another client (no key, odd headers) still decodes: its id is derived
//! from its topic, partition and offset, and headers we cannot read are ignored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use tokio::time::Instant;
use uuid::Uuid;

use super::leases::{Entry, State};
use crate::message::{CorrelationId, DeadLetterInfo, MessageId};

pub(super) const CORRELATION: &str = "tasker-correlation-id";
pub(super) const RECEIVE_COUNT: &str = "tasker-receive-count";
pub(super) const NOT_BEFORE: &str = "tasker-not-before";
pub(super) const ENQUEUED_AT: &str = "tasker-enqueued-at";
pub(super) const DEAD_LETTER: &str = "tasker-dead-letter";

/// What a record carries besides its payload and key.
#[derive(Default)]
pub(super) struct Extra<'a> {
    pub correlation_id: Option<CorrelationId>,
    pub delay: Duration,
    pub receive_count: u32,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub dead_letter: Option<&'a DeadLetterInfo>,
}

/// The headers of a record, `None` when there is nothing to say (the common case: no
/// allocation for headers).
pub(super) fn headers(extra: &Extra<'_>) -> Option<OwnedHeaders> {
    let mut h: Option<OwnedHeaders> = None;
    let mut add = |key: &str, value: &[u8]| {
        let current = h
            .take()
            .unwrap_or_else(|| OwnedHeaders::new_with_capacity(2));
        h = Some(current.insert(Header {
            key,
            value: Some(value),
        }));
    };
    if let Some(c) = extra.correlation_id {
        add(CORRELATION, c.0.as_bytes());
    }
    if !extra.delay.is_zero() {
        let due = SystemTime::now() + extra.delay;
        let ms = due
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        add(NOT_BEFORE, &ms.to_be_bytes());
    }
    if extra.receive_count > 0 {
        add(RECEIVE_COUNT, &extra.receive_count.to_be_bytes());
    }
    if let Some(at) = extra.enqueued_at {
        add(ENQUEUED_AT, &at.timestamp_millis().to_be_bytes());
    }
    if let Some(info) = extra.dead_letter {
        if let Ok(json) = serde_json::to_vec(info) {
            add(DEAD_LETTER, &json);
        }
    }
    h
}

/// A fetched record as a table entry, with its due time when it was sent with a delay.
pub(super) fn decode(record: &BorrowedMessage<'_>) -> (Entry, Option<Instant>) {
    let payload = Bytes::copy_from_slice(record.payload().unwrap_or_default());
    let message_id = record
        .key()
        .and_then(|k| Uuid::from_slice(k).ok())
        .map(MessageId)
        .unwrap_or_else(|| {
            MessageId::derived(
                record.topic(),
                &format!("{}/{}", record.partition(), record.offset()),
            )
        });
    let mut enqueued_at = record
        .timestamp()
        .to_millis()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .unwrap_or_else(Utc::now);
    let mut correlation_id = None;
    let mut prior_receives = 0;
    let mut not_before = None;
    let mut dead_letter = None;
    if let Some(headers) = record.headers() {
        for h in headers.iter() {
            let Some(v) = h.value else { continue };
            match h.key {
                CORRELATION => correlation_id = Uuid::from_slice(v).ok().map(CorrelationId),
                RECEIVE_COUNT => {
                    if let Ok(b) = <[u8; 4]>::try_from(v) {
                        prior_receives = u32::from_be_bytes(b);
                    }
                }
                NOT_BEFORE => {
                    if let Ok(b) = <[u8; 8]>::try_from(v) {
                        not_before = Some(due_instant(i64::from_be_bytes(b)));
                    }
                }
                ENQUEUED_AT => {
                    if let Some(at) = <[u8; 8]>::try_from(v)
                        .ok()
                        .and_then(|b| Utc.timestamp_millis_opt(i64::from_be_bytes(b)).single())
                    {
                        enqueued_at = at;
                    }
                }
                DEAD_LETTER => {
                    dead_letter = serde_json::from_slice::<DeadLetterInfo>(v)
                        .ok()
                        .map(Box::new)
                }
                _ => {}
            }
        }
    }
    let entry = Entry {
        partition: record.partition(),
        offset: record.offset(),
        payload,
        message_id,
        correlation_id,
        enqueued_at,
        prior_receives,
        deliveries: 0,
        generation: 0,
        state: State::Ready,
        dead_letter,
    };
    (entry, not_before)
}

/// A wall-clock due time as a `tokio` instant (timers run on tokio's clock).
fn due_instant(ms: i64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let ahead = (ms - now_ms).max(0) as u64;
    Instant::now() + Duration::from_millis(ahead)
}
