//! async-nats errors as `MessagingError`s: what is retryable, what names a missing queue, and
//! refused receipts. Every text from the client or the server is scrubbed of the URL's
//! secrets before it is kept.

use std::fmt::Display;

use super::NatsMessageService;
use crate::error::MessagingError;
use crate::queue_name::QueueName;
use crate::secret;
use crate::service::ProviderKind;

/// JetStream API error codes the provider acts on.
pub(super) const STREAM_NOT_FOUND: u64 = 10059;
pub(super) const CONSUMER_NOT_FOUND: u64 = 10014;
pub(super) const STREAM_NAME_EXISTS: u64 = 10058;
pub(super) const NO_MESSAGE_FOUND: u64 = 10037;

/// How an error text reads: a missing stream or consumer, a timeout, a broken connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Missing,
    Timeout,
    Connection,
    Other,
}

/// Classifies the text of an async-nats error (its error types differ per call; their text
/// carries the server's error code and the client's kind).
pub(super) fn kind_of(text: &str) -> Kind {
    let t = text.to_ascii_lowercase();
    if t.contains("error code 10059")
        || t.contains("error code 10014")
        || t.contains("stream not found")
        || t.contains("consumer not found")
        || t.contains("no stream found")
        || t.contains("no responders")
        || t.contains("does not exist")
    {
        Kind::Missing
    } else if t.contains("timed out") || t.contains("timeout") {
        Kind::Timeout
    } else if t.contains("broken pipe")
        || t.contains("disconnect")
        || t.contains("connection")
        || t.contains("channel closed")
    {
        Kind::Connection
    } else {
        Kind::Other
    }
}

impl NatsMessageService {
    /// A client or server error during `operation`, scrubbed; a missing stream or consumer
    /// becomes `QueueNotFound` of `queue`.
    pub(super) fn err(
        &self,
        operation: &'static str,
        queue: Option<&QueueName>,
        error: impl Display,
    ) -> MessagingError {
        let text = secret::scrub(&error.to_string(), &self.settings.url);
        match (kind_of(&text), queue) {
            (Kind::Missing, Some(q)) => MessagingError::QueueNotFound {
                queue: q.to_string(),
            },
            (Kind::Timeout, _) => MessagingError::Timeout {
                operation,
                after: self.settings.request_timeout,
            },
            (Kind::Connection, _) => MessagingError::Connection {
                provider: ProviderKind::Nats,
                message: format!("{operation}: {text}"),
            },
            (_, _) => MessagingError::Provider {
                provider: ProviderKind::Nats,
                operation,
                message: text,
                retryable: false,
            },
        }
    }

    /// A server-side JetStream API error (`{code, err_code, description}`).
    pub(super) fn api_err(
        &self,
        operation: &'static str,
        queue: &QueueName,
        error: &async_nats::jetstream::Error,
    ) -> MessagingError {
        let code = error.error_code().0;
        if code == STREAM_NOT_FOUND || code == CONSUMER_NOT_FOUND {
            return MessagingError::QueueNotFound {
                queue: queue.to_string(),
            };
        }
        // 5xx answers (no leader yet, a cluster electing) pass; 4xx ones do not.
        let retryable = error.code() >= 500;
        MessagingError::Provider {
            provider: ProviderKind::Nats,
            operation,
            message: secret::scrub(&error.to_string(), &self.settings.url),
            retryable,
        }
    }
}

/// A receipt refused for `queue`, with why.
pub(super) fn invalid(queue: &QueueName, reason: impl Into<String>) -> MessagingError {
    MessagingError::InvalidReceipt {
        queue: queue.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_classified() {
        assert_eq!(
            kind_of("stream not found (code 404, error code 10059)"),
            Kind::Missing
        );
        assert_eq!(kind_of("no stream found for given subject"), Kind::Missing);
        assert_eq!(kind_of("request timed out"), Kind::Timeout);
        assert_eq!(kind_of("something else"), Kind::Other);
    }
}
