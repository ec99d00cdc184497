//! `MessagingError` as Ruby exceptions of `TaskerCore::Messaging` (the hierarchy is written in
//! Ruby, lib/tasker_core/messaging/errors.rb, loaded before this library). The message is the
//! Rust error's `Display`, which never holds a password; the variant's fields become readers
//! (`queue`, `size`, `max`, `key`, `provider`, ...).

use magnus::{
    exception::ExceptionClass, prelude::*, value::ReprValue, Error, IntoValue, RClass, RModule,
    Ruby, Value,
};
use tasker_messaging::MessagingError;

/// `TaskerCore::Messaging::<name>`, or `RuntimeError` if the Ruby side did not define it.
fn class(ruby: &Ruby, name: &str) -> ExceptionClass {
    let found = ruby
        .class_object()
        .const_get::<_, RModule>("TaskerCore")
        .and_then(|m| m.const_get::<_, RModule>("Messaging"))
        .and_then(|m| m.const_get::<_, RClass>(name))
        .ok()
        .and_then(|c| ExceptionClass::from_value(c.as_value()));
    found.unwrap_or_else(|| ruby.exception_runtime_error())
}

fn raise_with(ruby: &Ruby, name: &str, message: String, fields: &[(&str, Value)]) -> Error {
    let class = class(ruby, name);
    let exception = match class.new_instance((message.clone(),)) {
        Ok(exception) => exception,
        Err(_) => return Error::new(class, message),
    };
    for (field, value) in fields {
        let _: Result<Value, Error> = exception
            .as_value()
            .funcall("instance_variable_set", (format!("@{field}"), *value));
    }
    Error::from(exception)
}

/// The Ruby exception for `error`.
pub fn to_ruby(ruby: &Ruby, error: MessagingError) -> Error {
    let message = error.to_string();
    let s = |v: &str| ruby.str_new(v).as_value();
    match &error {
        MessagingError::InvalidQueueName { name, .. } => {
            raise_with(ruby, "InvalidQueueName", message, &[("queue", s(name))])
        }
        MessagingError::QueueNotFound { queue } => {
            raise_with(ruby, "QueueNotFound", message, &[("queue", s(queue))])
        }
        MessagingError::PayloadTooLarge { size, max } => raise_with(
            ruby,
            "PayloadTooLarge",
            message,
            &[
                ("size", size.into_value_with(ruby)),
                ("max", max.into_value_with(ruby)),
            ],
        ),
        MessagingError::Serialization { .. } => {
            raise_with(ruby, "SerializationError", message, &[])
        }
        MessagingError::Connection { provider, .. } => raise_with(
            ruby,
            "ConnectionError",
            message,
            &[("provider", s(provider.as_str()))],
        ),
        MessagingError::Timeout { .. } => raise_with(ruby, "TimeoutError", message, &[]),
        MessagingError::InvalidReceipt { queue, .. } => {
            raise_with(ruby, "InvalidReceipt", message, &[("queue", s(queue))])
        }
        MessagingError::Unsupported { provider, .. } => raise_with(
            ruby,
            "Unsupported",
            message,
            &[("provider", s(provider.as_str()))],
        ),
        MessagingError::ProviderUnavailable { provider } => raise_with(
            ruby,
            "ProviderUnavailable",
            message,
            &[("provider", s(provider.as_str()))],
        ),
        MessagingError::ResourcesExceeded { .. } => {
            raise_with(ruby, "ResourcesExceeded", message, &[])
        }
        MessagingError::Configuration { key, .. } => {
            raise_with(ruby, "ConfigurationError", message, &[("key", s(key))])
        }
        MessagingError::CircuitOpen { .. } => raise_with(ruby, "CircuitOpen", message, &[]),
        MessagingError::Backpressure { .. } => raise_with(ruby, "Backpressure", message, &[]),
        MessagingError::Provider {
            provider,
            retryable,
            ..
        } => raise_with(
            ruby,
            if *retryable {
                "RetryableProviderError"
            } else {
                "PermanentProviderError"
            },
            message,
            &[("provider", s(provider.as_str()))],
        ),
        MessagingError::NotInitialized(_) => raise_with(ruby, "NotInitialized", message, &[]),
        // A variant added later: classified by the library's own rule.
        _ => raise_with(
            ruby,
            if error.is_retryable() {
                "RetryableError"
            } else {
                "PermanentError"
            },
            message,
            &[],
        ),
    }
}

/// A failure of the binding itself (not of a provider).
pub fn native_error(ruby: &Ruby, message: impl Into<String>) -> Error {
    raise_with(ruby, "NativeError", message.into(), &[])
}

/// A blocking call was interrupted and Ruby had no exception pending.
pub fn interrupted_error(ruby: &Ruby) -> Error {
    raise_with(ruby, "Interrupted", "the call was interrupted".into(), &[])
}

/// A payload that does not decode into the type asked for (`SerializationError`).
pub fn serialization_error(ruby: &Ruby, message: String) -> Error {
    raise_with(ruby, "SerializationError", message, &[])
}

/// A bad argument from Ruby (`ArgumentError`).
pub fn arg_error(ruby: &Ruby, message: impl Into<String>) -> Error {
    Error::new(ruby.exception_arg_error(), message.into())
}
