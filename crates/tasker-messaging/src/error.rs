//! The one error type every provider and layer returns.
//!
//! Each variant is either *retryable* (the same call may succeed later: the backend was
//! unreachable, slow, or overloaded) or *permanent* (repeating the call cannot help: bad input,
//! a missing queue, an unsupported operation). Retry policies and circuit breakers use
//! [`MessagingError::is_retryable`]; bad input must never open a circuit.

use std::time::Duration;

use crate::service::{Capability, ProviderKind};

/// Result alias used across the crate.
pub type Result<T, E = MessagingError> = std::result::Result<T, E>;

/// Whether repeating an operation can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// A transient fault: retry with backoff, count towards the circuit breaker.
    Retryable,
    /// The call itself is wrong or impossible: do not retry, do not trip a breaker.
    Permanent,
}

/// Every failure the messaging layer reports.
///
/// Messages never contain secrets: connection errors are built from redacted URLs.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MessagingError {
    /// The queue name breaks the naming rule (see [`crate::QueueName`]); nothing was sent.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidQueueName { name: String, reason: String },

    /// The queue does not exist (create it first).
    #[error("queue {queue:?} not found")]
    QueueNotFound { queue: String },

    /// The payload exceeds what the provider (or configuration) accepts.
    #[error("payload of {size} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge { size: usize, max: usize },

    /// A value could not be encoded to, or decoded from, a payload.
    #[error("{direction} of {type_name} failed: {message}")]
    Serialization {
        direction: SerdeDirection,
        type_name: &'static str,
        message: String,
    },

    /// The backend could not be reached or the connection broke.
    #[error("{provider} connection failed: {message}")]
    Connection {
        provider: ProviderKind,
        message: String,
    },

    /// The backend did not answer in time.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        operation: &'static str,
        after: Duration,
    },

    /// The receipt handle does not name a current lease: it is malformed, belongs to another
    /// queue, or its lease expired and the message was handed to another receiver since.
    #[error("invalid receipt for queue {queue:?}: {reason}")]
    InvalidReceipt { queue: String, reason: String },

    /// The provider does not offer this capability.
    #[error("{provider} does not support {capability}")]
    Unsupported {
        provider: ProviderKind,
        capability: Capability,
    },

    /// The configured provider is not compiled into this build.
    #[error("provider {provider} is not available in this build (enable the cargo feature `{provider}`)")]
    ProviderUnavailable { provider: ProviderKind },

    /// A resource budget would be exceeded (connections, memory, in-flight messages).
    #[error("{resource}: {required} required but only {available} available")]
    ResourcesExceeded {
        resource: String,
        required: u64,
        available: u64,
    },

    /// A configuration key is missing or has a bad value.
    #[error("configuration error at `{key}`: {message}")]
    Configuration { key: String, message: String },

    /// A circuit breaker is open for this service; the backend was not called.
    #[error("circuit {name:?} is open; failing fast")]
    CircuitOpen { name: String },

    /// The system is shedding load (global backpressure).
    #[error("backpressure: {reason}")]
    Backpressure { reason: String },

    /// Any other backend error; `retryable` records the provider's own classification.
    #[error("{provider} error during {operation}: {message}")]
    Provider {
        provider: ProviderKind,
        operation: &'static str,
        message: String,
        retryable: bool,
    },

    /// The service was used before `initialize` or after `shutdown`.
    #[error("service not initialized: {0}")]
    NotInitialized(String),
}

/// Direction of a failed serde operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerdeDirection {
    Encode,
    Decode,
}

impl std::fmt::Display for SerdeDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SerdeDirection::Encode => "encoding",
            SerdeDirection::Decode => "decoding",
        })
    }
}

impl MessagingError {
    /// Retryable or permanent (see the module docs).
    pub fn class(&self) -> ErrorClass {
        match self {
            MessagingError::Connection { .. }
            | MessagingError::Timeout { .. }
            | MessagingError::CircuitOpen { .. }
            | MessagingError::Backpressure { .. } => ErrorClass::Retryable,
            MessagingError::Provider { retryable, .. } => {
                if *retryable {
                    ErrorClass::Retryable
                } else {
                    ErrorClass::Permanent
                }
            }
            MessagingError::InvalidQueueName { .. }
            | MessagingError::QueueNotFound { .. }
            | MessagingError::PayloadTooLarge { .. }
            | MessagingError::Serialization { .. }
            | MessagingError::InvalidReceipt { .. }
            | MessagingError::Unsupported { .. }
            | MessagingError::ProviderUnavailable { .. }
            | MessagingError::ResourcesExceeded { .. }
            | MessagingError::Configuration { .. }
            | MessagingError::NotInitialized(_) => ErrorClass::Permanent,
        }
    }

    /// Shorthand for `class() == ErrorClass::Retryable`.
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// Whether this error should count as a backend failure for a circuit breaker.
    /// A fast-fail from an already open circuit or from backpressure is not a new failure.
    pub fn is_backend_failure(&self) -> bool {
        self.is_retryable()
            && !matches!(
                self,
                MessagingError::CircuitOpen { .. } | MessagingError::Backpressure { .. }
            )
    }

    // Providers build these; a build without any provider has no caller.
    #[cfg_attr(
        not(any(
            feature = "in-memory",
            feature = "pgmq",
            feature = "rabbitmq",
            feature = "redis",
            feature = "sqs",
            feature = "nats",
            feature = "kafka"
        )),
        allow(dead_code)
    )]
    pub(crate) fn queue_not_found(queue: &str) -> Self {
        MessagingError::QueueNotFound {
            queue: queue.to_owned(),
        }
    }

    // Providers build these; a build without any provider has no caller.
    #[cfg_attr(
        not(any(
            feature = "in-memory",
            feature = "pgmq",
            feature = "rabbitmq",
            feature = "redis",
            feature = "sqs",
            feature = "nats",
            feature = "kafka"
        )),
        allow(dead_code)
    )]
    pub(crate) fn invalid_receipt(queue: &str, reason: impl Into<String>) -> Self {
        MessagingError::InvalidReceipt {
            queue: queue.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        MessagingError::Configuration {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Turns figment's error into one naming the full key, and never the value: a value in the
    /// wrong place (a URL where a table belongs, a password in a number's key) may be a
    /// secret, and serde's messages quote it. The source (file or environment) is named.
    pub(crate) fn from_figment(err: figment::Error) -> Self {
        use figment::error::Kind;
        let mut key = err.path.join(".");
        let mut extend_key = |field: &str| {
            if err.path.last().map(String::as_str) != Some(field) {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(field);
            }
        };
        let message = match &err.kind {
            Kind::UnknownField(field, expected) => {
                extend_key(field);
                format!("unknown key; expected one of {}", expected.join(", "))
            }
            Kind::MissingField(field) => {
                extend_key(field);
                "missing required key".to_owned()
            }
            Kind::DuplicateField(field) => {
                extend_key(field);
                "key given twice".to_owned()
            }
            Kind::InvalidType(actual, expected) => {
                format!("expected {expected}, found {}", kind_of(actual))
            }
            Kind::InvalidValue(actual, expected) => {
                format!("invalid {}, expected {expected}", kind_of(actual))
            }
            Kind::InvalidLength(len, expected) => format!("{len} items, expected {expected}"),
            Kind::UnknownVariant(_, expected) => {
                format!("unknown value; expected one of {}", expected.join(", "))
            }
            Kind::ISizeOutOfRange(_) | Kind::USizeOutOfRange(_) => "number out of range".into(),
            Kind::Unsupported(actual) => format!("{} is not supported here", kind_of(actual)),
            Kind::UnsupportedKey(actual, expected) => {
                format!("{} cannot be a key, expected {expected}", kind_of(actual))
            }
            Kind::Message(message) => without_quoted_source(message),
        };
        let source = err
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default();
        MessagingError::config(
            if key.is_empty() { "<root>".into() } else { key },
            format!("{message}{source}"),
        )
    }
}

/// What kind of value serde found, without the value.
fn kind_of(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) => "a character",
        Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "an empty value",
        Actual::Option => "an optional value",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        Actual::NewtypeStruct
        | Actual::Enum
        | Actual::UnitVariant
        | Actual::NewtypeVariant
        | Actual::TupleVariant
        | Actual::StructVariant
        | Actual::Other(_) => "another kind of value",
    }
}

/// A parser's own message (a TOML syntax error, a custom deserializer's error) without the
/// source excerpt it quotes (`3 | database_url = "postgres://u:pw@...`), lines joined, and
/// any remaining URL userinfo or known secret scrubbed.
fn without_quoted_source(message: &str) -> String {
    let kept: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line
                    .trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ')
                    .starts_with('|')
        })
        .collect();
    crate::secret::scrub_known(&kept.join(": "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parser_message_loses_its_quoted_source() {
        let toml = "TOML parse error at line 3, column 64\n  |\n3 | url = \"amqp://u:Pw@h\n  |      ^\ninvalid basic string\n";
        assert_eq!(
            without_quoted_source(toml),
            "TOML parse error at line 3, column 64: invalid basic string"
        );
    }

    #[test]
    fn classification_separates_transient_from_bad_input() {
        let transient = MessagingError::Connection {
            provider: ProviderKind::Pgmq,
            message: "refused".into(),
        };
        assert!(transient.is_retryable());
        assert!(transient.is_backend_failure());

        let open = MessagingError::CircuitOpen { name: "x".into() };
        assert!(open.is_retryable());
        assert!(!open.is_backend_failure());

        for permanent in [
            MessagingError::queue_not_found("q"),
            MessagingError::PayloadTooLarge { size: 2, max: 1 },
            MessagingError::invalid_receipt("q", "stale"),
            MessagingError::InvalidQueueName {
                name: "A".into(),
                reason: "upper case".into(),
            },
        ] {
            assert_eq!(permanent.class(), ErrorClass::Permanent, "{permanent}");
            assert!(!permanent.is_backend_failure());
        }
    }
}
