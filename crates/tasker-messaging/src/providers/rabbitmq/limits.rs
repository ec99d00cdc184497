//! A queue's `max_receive_count`, as every process reads it.
//!
//! The limit is stored with the queue itself: `create_queue` declares it with the dead-letter
//! exchange `tasker.dead_letter` and the dead-letter routing key `<queue>.<max>` (no
//! dead-letter exchange at all when the limit is disabled), on both queue types. Quorum
//! queues also enforce it in the broker (`x-delivery-limit`); on classic queues, and for
//! copies the provider republished with its own count, the provider enforces it when it
//! releases a message, and needs the number.
//!
//! The service that created the queue remembers it. Any other service (another worker
//! process, a restarted one) reads it back once through AMQP: there is no call that returns a
//! queue's arguments, but `queue.declare` checks a re-declaration's arguments for equivalence
//! and refuses an inequivalent one with `406 PRECONDITION_FAILED` naming the current value
//! ("... inequivalent arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': received '0'
//! but current is 'q.5'" on 3.10; later releases add "the value ... of type ..."). The probe
//! declares the queue with our dead-letter exchange and a routing key of the wrong *type*
//! (a number): it can never be equivalent, so the broker always answers with the current
//! value, and it is invalid for a new queue, so a queue deleted meanwhile is not created by
//! the probe. The probe costs one channel (closed by the refusal) per queue per process.
//! When the answer cannot be read (another broker's wording, a queue declared by someone
//! else), the configured default applies and a warning says so.

use lapin::protocol::AMQPSoftError;
use lapin::types::{AMQPValue, FieldTable};

use super::admin::{durable, DEAD_LETTER_EXCHANGE};
use super::codec::long_string;
use super::Inner;
use crate::queue_name::QueueName;

/// What a refused probe said about the queue's limit.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum StoredLimit {
    /// Dead-lettered through our exchange at this many receives.
    Max(u32),
    /// No dead-letter exchange: the limit is disabled.
    Disabled,
    /// The queue does not exist (the probe's arguments are invalid for a new queue).
    Missing,
}

/// Reads the broker's refusal of the probe declaration (see the module docs).
pub(super) fn stored_limit(queue: &str, refusal: &str) -> Option<StoredLimit> {
    const CURRENT: &str = "but current is ";
    if refusal.contains("invalid arg") {
        return Some(StoredLimit::Missing);
    }
    let current = refusal.split(CURRENT).nth(1)?;
    if refusal.contains("inequivalent arg 'x-dead-letter-exchange'") {
        return (current.trim() == "none").then_some(StoredLimit::Disabled);
    }
    if !refusal.contains("inequivalent arg 'x-dead-letter-routing-key'") {
        return None;
    }
    // 3.x: "current is 'q.5'"; later: "current is the value 'q.5' of type 'longstr'".
    let quoted = current.strip_prefix("the value ").unwrap_or(current);
    let value = quoted.strip_prefix('\'')?;
    let end = value.rfind("' of type").or_else(|| value.rfind('\''))?;
    let key = &value[..end];
    let (source, max) = key.rsplit_once('.')?;
    if source != queue {
        return None;
    }
    max.parse().ok().map(StoredLimit::Max)
}

impl Inner {
    /// The `max_receive_count` of `queue`: remembered from this service's `create_queue`,
    /// else read from the queue's own arguments once (see the module docs).
    pub(super) async fn max_receive_count(&self, queue: &QueueName) -> u32 {
        if let Some(max) = self.max_receive.lock().get(queue) {
            return *max;
        }
        if queue
            .as_str()
            .ends_with(self.settings.dead_letter_suffix.as_str())
        {
            return 0;
        }
        match self.read_stored_limit(queue).await {
            Some(StoredLimit::Max(max)) => {
                self.max_receive.lock().insert(queue.clone(), max);
                max
            }
            Some(StoredLimit::Disabled) => {
                self.max_receive.lock().insert(queue.clone(), 0);
                0
            }
            // Gone: nothing to remember; the message goes nowhere anyway.
            Some(StoredLimit::Missing) => self.settings.default_max_receive_count,
            None => {
                tracing::warn!(
                    queue = %queue,
                    default = self.settings.default_max_receive_count,
                    "could not read the queue's max_receive_count from its arguments; \
                     using the configured default"
                );
                self.settings.default_max_receive_count
            }
        }
    }

    pub(super) async fn read_stored_limit(&self, queue: &QueueName) -> Option<StoredLimit> {
        let link = self.link().await.ok()?;
        // Its own channel: the refusal closes it.
        let ch = link.conn.create_channel().await.ok()?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), self.queue_type_arg());
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(DEAD_LETTER_EXCHANGE),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongLongInt(0),
        );
        let refusal = match ch
            .queue_declare(queue.as_str().into(), durable(), args)
            .await
        {
            // Equivalent: impossible with a number as routing key; nothing learned.
            Ok(_) => return None,
            Err(e) => e,
        };
        match refusal.kind() {
            lapin::ErrorKind::ProtocolError(amqp)
                if *amqp.kind()
                    == lapin::protocol::AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) =>
            {
                stored_limit(queue.as_str(), amqp.get_message().as_str())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_stored_limit() {
        let q = "orders_x1";
        let limit = "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-routing-key' for queue 'orders_x1' in vhost '/': received the value '0' of type 'long' but current is the value 'orders_x1.5' of type 'longstr'";
        assert_eq!(stored_limit(q, limit), Some(StoredLimit::Max(5)));
        let disabled = "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'orders_x1' in vhost '/': received the value 'tasker.dead_letter' of type 'longstr' but current is none";
        assert_eq!(stored_limit(q, disabled), Some(StoredLimit::Disabled));
        let missing = "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue 'orders_x1' in vhost '/': {unacceptable_type,long}";
        assert_eq!(stored_limit(q, missing), Some(StoredLimit::Missing));
        // Someone else's dead-letter setup, or another queue's key: not ours to read.
        let foreign = "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-exchange' for queue 'orders_x1' in vhost '/': received the value 'tasker.dead_letter' of type 'longstr' but current is the value 'theirs' of type 'longstr'";
        assert_eq!(stored_limit(q, foreign), None);
        // RabbitMQ 3.10's wording.
        let limit_3_10 = "PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-routing-key' for queue 'orders_x1' in vhost '/': received '0' but current is 'orders_x1.7'";
        assert_eq!(stored_limit(q, limit_3_10), Some(StoredLimit::Max(7)));
        let other_key = limit.replace("'orders_x1.5'", "'billing.5'");
        assert_eq!(stored_limit(q, &other_key), None);
        assert_eq!(
            stored_limit(q, "PRECONDITION_FAILED - something else"),
            None
        );
    }
}
