//! Messages to and from AMQP: ids in the AMQP properties, the rest in headers.
//!
//! `message_id` and `correlation_id` ride in the standard properties (so other AMQP clients
//! see them); the enqueue time, the provider's own receive count (classic queues) and the
//! dead-letter record are `x-tasker-*` headers. A quorum queue's `x-delivery-count` gives the
//! receive count; a message dead-lettered by the broker (delivery limit) is recognised by its
//! `x-death` record and the routing key `<source>.<max_receive_count>` of the dead-letter
//! exchange.

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::message::{
    CorrelationId, DeadLetterInfo, DeadLetterReason, MessageId, OutgoingMessage,
    QueuedMessageMetadata, ReceiptHandle, ReceivedMessage,
};
use crate::queue_name::QueueName;

pub(super) const H_ENQUEUED_AT: &str = "x-tasker-enqueued-at";
pub(super) const H_RECEIVE_COUNT: &str = "x-tasker-receive-count";
pub(super) const H_DL_SOURCE: &str = "x-tasker-dl-source";
pub(super) const H_DL_REASON: &str = "x-tasker-dl-reason";
pub(super) const H_DL_COUNT: &str = "x-tasker-dl-count";
pub(super) const H_DL_AT: &str = "x-tasker-dl-at";
const H_DELIVERY_COUNT: &str = "x-delivery-count";
const H_DEATH: &str = "x-death";

/// Headers the broker or the provider adds in transit; dropped when a message is moved
/// (redrive, explicit dead-letter) so it starts clean where it lands.
const TRANSIT_HEADERS: [&str; 11] = [
    H_RECEIVE_COUNT,
    H_DL_SOURCE,
    H_DL_REASON,
    H_DL_COUNT,
    H_DL_AT,
    H_DELIVERY_COUNT,
    H_DEATH,
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-reason",
];

/// Properties of a fresh message.
pub(super) fn outgoing_properties(message: &OutgoingMessage) -> BasicProperties {
    let now = Utc::now();
    let mut headers = FieldTable::default();
    headers.insert(
        H_ENQUEUED_AT.into(),
        AMQPValue::LongLongInt(now.timestamp_millis()),
    );
    let mut props = BasicProperties::default()
        .with_message_id(ShortString::from(message.message_id.to_string()))
        .with_delivery_mode(2)
        .with_timestamp(now.timestamp().max(0) as u64)
        .with_headers(headers);
    if let Some(c) = message.correlation_id {
        props = props.with_correlation_id(ShortString::from(c.to_string()));
    }
    props
}

/// The same message's properties with transit headers removed and `extra` added.
pub(super) fn moved_properties(
    props: &BasicProperties,
    extra: impl IntoIterator<Item = (&'static str, AMQPValue)>,
) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = props.headers() {
        for (k, v) in old.inner() {
            if !TRANSIT_HEADERS.contains(&k.as_str()) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    for (k, v) in extra {
        headers.insert(k.into(), v);
    }
    props.clone().with_headers(headers).with_delivery_mode(2)
}

/// Whether the delivery came from a quorum queue (which counts deliveries itself).
pub(super) fn counted_by_broker(props: &BasicProperties) -> bool {
    header(props, H_DELIVERY_COUNT).is_some()
}

pub(super) fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(key)
}

fn as_i64(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

fn as_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn millis_to_utc(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}

/// Receive count of this delivery: the receives the provider counted before the message was
/// last republished (`x-tasker-receive-count`, classic queues and copies given back
/// uncounted), plus the deliveries the quorum queue counted since (`x-delivery-count`), plus
/// this one.
pub(super) fn receive_count(props: &BasicProperties, redelivered: bool) -> u32 {
    let earlier = |key| {
        header(props, key)
            .and_then(as_i64)
            .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX / 4))
    };
    match (earlier(H_DELIVERY_COUNT), earlier(H_RECEIVE_COUNT)) {
        (None, None) if redelivered => 2,
        (None, None) => 1,
        (broker, ours) => broker
            .unwrap_or(0)
            .saturating_add(ours.unwrap_or(0))
            .saturating_add(1),
    }
}

/// Whether the provider's own count rides on the message (it was republished).
pub(super) fn carries_own_count(props: &BasicProperties) -> bool {
    header(props, H_RECEIVE_COUNT).is_some()
}

/// The properties of a copy republished to its queue with `counted` receives so far: the
/// broker's count is folded into ours (a quorum queue counts the copy from zero).
pub(super) fn requeue_properties(props: &BasicProperties, counted: u32) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    let mut clean = FieldTable::default();
    for (k, v) in headers.inner() {
        if k.as_str() != H_DELIVERY_COUNT && k.as_str() != H_RECEIVE_COUNT {
            clean.insert(k.clone(), v.clone());
        }
    }
    headers = clean;
    headers.insert(
        H_RECEIVE_COUNT.into(),
        AMQPValue::LongLongInt(i64::from(counted)),
    );
    props.clone().with_headers(headers)
}

/// The enqueue time the sender wrote, or `now` for a message from a client that wrote none.
fn enqueued_at(props: &BasicProperties, now: DateTime<Utc>) -> DateTime<Utc> {
    header(props, H_ENQUEUED_AT)
        .and_then(as_i64)
        .and_then(millis_to_utc)
        .or_else(|| {
            props
                .timestamp()
                .and_then(|s| Utc.timestamp_opt(s as i64, 0).single())
        })
        .unwrap_or(now)
}

/// The dead-letter record of a message, if it was dead-lettered (by the provider, or by the
/// broker when it reached the delivery limit). A message that only passed through a delay
/// queue (`x-death` reason `expired`) is not a dead letter.
fn dead_letter_info(
    props: &BasicProperties,
    routing_key: &str,
    original_enqueued_at: DateTime<Utc>,
) -> Option<DeadLetterInfo> {
    if let Some(source) = header(props, H_DL_SOURCE).and_then(as_string) {
        let source_queue = QueueName::new(&source).ok()?;
        let reason = header(props, H_DL_REASON)
            .and_then(as_string)
            .and_then(|r| serde_json::from_str::<DeadLetterReason>(&r).ok())
            .unwrap_or(DeadLetterReason::Rejected {
                reason: "unknown".into(),
            });
        let receive_count = header(props, H_DL_COUNT)
            .and_then(as_i64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        let dead_lettered_at = header(props, H_DL_AT)
            .and_then(as_i64)
            .and_then(millis_to_utc)
            .unwrap_or_else(Utc::now);
        return Some(DeadLetterInfo {
            source_queue,
            reason,
            receive_count,
            dead_lettered_at,
            original_enqueued_at,
        });
    }
    let AMQPValue::FieldArray(deaths) = header(props, H_DEATH)? else {
        return None;
    };
    let AMQPValue::FieldTable(last) = deaths.as_slice().first()? else {
        return None;
    };
    let reason = last.inner().get("reason").and_then(as_string)?;
    if reason == "expired" {
        return None;
    }
    let source = last.inner().get("queue").and_then(as_string)?;
    let source_queue = QueueName::new(&source).ok()?;
    let dead_lettered_at = last
        .inner()
        .get("time")
        .and_then(as_i64)
        .and_then(|s| Utc.timestamp_opt(s, 0).single())
        .unwrap_or_else(Utc::now);
    // The dead-letter exchange routes with `<source>.<max_receive_count>`.
    let max = routing_key
        .rsplit_once('.')
        .and_then(|(_, n)| n.parse::<u32>().ok());
    let (reason, receive_count) = match (reason.as_str(), max) {
        ("delivery_limit", Some(max)) => (
            DeadLetterReason::MaxReceiveCountExceeded {
                max_receive_count: max,
            },
            max,
        ),
        (other, _) => (
            DeadLetterReason::Rejected {
                reason: format!("dead-lettered by the broker: {other}"),
            },
            0,
        ),
    };
    Some(DeadLetterInfo {
        source_queue,
        reason,
        receive_count,
        dead_lettered_at,
        original_enqueued_at,
    })
}

/// Everything a received delivery becomes, except the receipt (assigned by the lease table).
pub(super) struct Decoded {
    pub payload: Bytes,
    pub message_id: MessageId,
    pub correlation_id: Option<CorrelationId>,
    pub enqueued_at: DateTime<Utc>,
    pub receive_count: u32,
    pub dead_letter: Option<Box<DeadLetterInfo>>,
}

pub(super) fn decode(
    queue: &QueueName,
    payload: Bytes,
    props: &BasicProperties,
    routing_key: &str,
    redelivered: bool,
    now: DateTime<Utc>,
) -> Decoded {
    let enqueued_at = enqueued_at(props, now);
    let message_id = match props.message_id() {
        Some(id) => id
            .as_str()
            .parse::<MessageId>()
            .unwrap_or_else(|_| MessageId::derived(queue.as_str(), id.as_str())),
        // Written by another client without an id: derive a stable one from the content.
        None => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            payload.hash(&mut h);
            enqueued_at.timestamp_millis().hash(&mut h);
            MessageId::derived(queue.as_str(), &format!("{:x}", h.finish()))
        }
    };
    let correlation_id = props
        .correlation_id()
        .as_ref()
        .and_then(|c| c.as_str().parse::<CorrelationId>().ok());
    Decoded {
        message_id,
        correlation_id,
        enqueued_at,
        receive_count: receive_count(props, redelivered),
        dead_letter: dead_letter_info(props, routing_key, enqueued_at).map(Box::new),
        payload,
    }
}

impl Decoded {
    pub(super) fn into_received(
        self,
        receipt: ReceiptHandle,
        expires: Option<DateTime<Utc>>,
    ) -> ReceivedMessage {
        ReceivedMessage {
            payload: self.payload,
            metadata: QueuedMessageMetadata {
                message_id: self.message_id,
                correlation_id: self.correlation_id,
                receipt_handle: receipt,
                enqueued_at: self.enqueued_at,
                receive_count: self.receive_count,
                visibility_timeout_expires: expires,
                dead_letter: self.dead_letter,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_enqueue_time_round_trip_through_properties() {
        let out = OutgoingMessage::new("x").with_correlation_id(CorrelationId::new());
        let props = outgoing_properties(&out);
        let q = QueueName::new("q").unwrap();
        let d = decode(&q, Bytes::from_static(b"x"), &props, "q", false, Utc::now());
        assert_eq!(d.message_id, out.message_id);
        assert_eq!(d.correlation_id, out.correlation_id);
        assert_eq!(d.receive_count, 1);
        assert!(d.dead_letter.is_none());
        assert!((Utc::now() - d.enqueued_at).num_seconds().abs() < 5);
    }

    #[test]
    fn quorum_delivery_count_gives_the_receive_count() {
        let mut headers = FieldTable::default();
        headers.insert(H_DELIVERY_COUNT.into(), AMQPValue::LongLongInt(2));
        let props = BasicProperties::default().with_headers(headers);
        assert_eq!(receive_count(&props, true), 3);
    }

    #[test]
    fn a_republished_copy_keeps_its_count_on_a_quorum_queue() {
        // The broker counts the copy from zero; our header remembers the earlier receipts.
        let mut headers = FieldTable::default();
        headers.insert(H_DELIVERY_COUNT.into(), AMQPValue::LongLongInt(0));
        headers.insert(H_RECEIVE_COUNT.into(), AMQPValue::LongLongInt(2));
        let props = BasicProperties::default().with_headers(headers);
        assert_eq!(receive_count(&props, false), 3);
        // Deliveries the queue counted since the copy add to the copy's count.
        let props = requeue_properties(&props, 2);
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(H_DELIVERY_COUNT.into(), AMQPValue::LongLongInt(1));
        let props = props.with_headers(headers);
        assert_eq!(receive_count(&props, true), 4);
        // Without any count: redelivered says "at least the second".
        assert_eq!(receive_count(&BasicProperties::default(), false), 1);
        assert_eq!(receive_count(&BasicProperties::default(), true), 2);
    }

    #[test]
    fn provider_dead_letter_record_is_read_back() {
        let reason = DeadLetterReason::Rejected {
            reason: "card declined".into(),
        };
        let props = moved_properties(
            &outgoing_properties(&OutgoingMessage::new("x")),
            [
                (H_DL_SOURCE, long_string("orders")),
                (
                    H_DL_REASON,
                    long_string(&serde_json::to_string(&reason).unwrap()),
                ),
                (H_DL_COUNT, AMQPValue::LongLongInt(1)),
                (
                    H_DL_AT,
                    AMQPValue::LongLongInt(Utc::now().timestamp_millis()),
                ),
            ],
        );
        let info = dead_letter_info(&props, "orders_dlq", Utc::now()).unwrap();
        assert_eq!(info.source_queue.as_str(), "orders");
        assert_eq!(info.reason, reason);
        assert_eq!(info.receive_count, 1);
        // Moving it again strips the record.
        let clean = moved_properties(&props, []);
        assert!(dead_letter_info(&clean, "orders", Utc::now()).is_none());
    }
}
