//! `TaskerCore::Messaging::ReceivedMessage`: a received message, kept as the Rust value; each
//! reader builds its Ruby value when called, so a message nobody inspects costs one object.
//! The Ruby side adds `payload` (the decoded JSON) to the class.

use chrono::{DateTime, Utc};
use magnus::{prelude::*, value::ReprValue, Error, RString, Ruby, Value};
use tasker_messaging::{DeadLetterReason, ReceiptHandle, ReceivedMessage};

#[magnus::wrap(
    class = "TaskerCore::Messaging::ReceivedMessage",
    free_immediately,
    size
)]
pub struct RbReceivedMessage {
    pub queue: String,
    pub message: ReceivedMessage,
}

pub fn time(ruby: &Ruby, at: DateTime<Utc>) -> Result<Value, Error> {
    Ok(ruby
        .time_nano_new(at.timestamp(), i64::from(at.timestamp_subsec_nanos()))?
        .as_value())
}

/// Bytes as a Ruby String: UTF-8 when they are, binary (ASCII-8BIT) otherwise.
pub fn bytes_to_ruby(ruby: &Ruby, bytes: &[u8]) -> RString {
    if std::str::from_utf8(bytes).is_ok() {
        ruby.enc_str_new(bytes, ruby.utf8_encoding())
    } else {
        ruby.str_from_slice(bytes)
    }
}

impl RbReceivedMessage {
    pub fn receipt(&self) -> &ReceiptHandle {
        self.message.receipt()
    }

    fn body(ruby: &Ruby, rb_self: &Self) -> RString {
        bytes_to_ruby(ruby, &rb_self.message.payload)
    }

    fn bytesize(&self) -> usize {
        self.message.payload.len()
    }

    fn message_id(&self) -> String {
        self.message.metadata.message_id.to_string()
    }

    fn correlation_id(&self) -> Option<String> {
        self.message.metadata.correlation_id.map(|c| c.to_string())
    }

    fn receive_count(&self) -> u32 {
        self.message.metadata.receive_count
    }

    fn receipt_handle(&self) -> String {
        self.message.metadata.receipt_handle.to_string()
    }

    fn queue_name(&self) -> String {
        self.queue.clone()
    }

    fn enqueued_at(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        time(ruby, rb_self.message.metadata.enqueued_at)
    }

    fn visibility_timeout_expires(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        match rb_self.message.metadata.visibility_timeout_expires {
            Some(at) => time(ruby, at),
            None => Ok(ruby.qnil().as_value()),
        }
    }

    /// Where a dead letter came from and why (`nil` for a message that is not one).
    fn dead_letter(ruby: &Ruby, rb_self: &Self) -> Result<Value, Error> {
        let Some(info) = rb_self.message.metadata.dead_letter.as_deref() else {
            return Ok(ruby.qnil().as_value());
        };
        let hash = ruby.hash_new();
        hash.aset(ruby.to_symbol("source_queue"), info.source_queue.as_str())?;
        let kind = match &info.reason {
            DeadLetterReason::MaxReceiveCountExceeded { .. } => "max_receive_count_exceeded",
            DeadLetterReason::Rejected { .. } => "rejected",
            DeadLetterReason::Undecodable { .. } => "undecodable",
        };
        hash.aset(ruby.to_symbol("kind"), ruby.to_symbol(kind))?;
        hash.aset(ruby.to_symbol("reason"), info.reason.to_string())?;
        hash.aset(ruby.to_symbol("receive_count"), info.receive_count)?;
        hash.aset(
            ruby.to_symbol("dead_lettered_at"),
            time(ruby, info.dead_lettered_at)?,
        )?;
        hash.aset(
            ruby.to_symbol("original_enqueued_at"),
            time(ruby, info.original_enqueued_at)?,
        )?;
        Ok(hash.as_value())
    }

    fn inspect(&self) -> String {
        format!(
            "#<TaskerCore::Messaging::ReceivedMessage queue={} message_id={} receive_count={} bytes={}>",
            self.queue,
            self.message.metadata.message_id,
            self.message.metadata.receive_count,
            self.message.payload.len()
        )
    }
}

pub fn define(ruby: &Ruby, messaging: magnus::RModule) -> Result<(), Error> {
    use magnus::method;
    let class = messaging.define_class("ReceivedMessage", ruby.class_object())?;
    class.undef_default_alloc_func();
    class.define_method("body", method!(RbReceivedMessage::body, 0))?;
    class.define_method("bytesize", method!(RbReceivedMessage::bytesize, 0))?;
    class.define_method("message_id", method!(RbReceivedMessage::message_id, 0))?;
    class.define_method(
        "correlation_id",
        method!(RbReceivedMessage::correlation_id, 0),
    )?;
    class.define_method(
        "receive_count",
        method!(RbReceivedMessage::receive_count, 0),
    )?;
    class.define_method(
        "receipt_handle",
        method!(RbReceivedMessage::receipt_handle, 0),
    )?;
    class.define_method("queue_name", method!(RbReceivedMessage::queue_name, 0))?;
    class.define_method("enqueued_at", method!(RbReceivedMessage::enqueued_at, 0))?;
    class.define_method(
        "visibility_timeout_expires",
        method!(RbReceivedMessage::visibility_timeout_expires, 0),
    )?;
    class.define_method("dead_letter", method!(RbReceivedMessage::dead_letter, 0))?;
    class.define_method("inspect", method!(RbReceivedMessage::inspect, 0))?;
    Ok(())
}
