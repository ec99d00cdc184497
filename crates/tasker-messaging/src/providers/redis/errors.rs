//! Errors as [`MessagingError`]s: redis-rs's (retryable or not, never with the URL's
//! password), the scripts' own replies (`TMQ_NOQUEUE`), and refused receipts.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::MessagingError;
use crate::queue_name::QueueName;
use crate::secret::{scrub, SecretUrl};
use crate::service::ProviderKind;

const PROVIDER: ProviderKind = ProviderKind::Redis;

/// Maps a redis-rs error: connection trouble and cluster reconfiguration are retryable, a
/// script's `TMQ_NOQUEUE` is `QueueNotFound` (of `queue`, or of `dlq` for `TMQ_NODLQ`), and
/// nothing carries the URL's password.
pub(super) fn map_redis(
    e: RedisError,
    operation: &'static str,
    queue: Option<&QueueName>,
    dlq: Option<&QueueName>,
    url: &SecretUrl,
) -> MessagingError {
    // Redis may report a script's error reply under its own code (`ERR`, a response
    // error) with ours as the first word of the detail.
    let ours = |tag: &str| e.code() == Some(tag) || e.detail().is_some_and(|d| d.starts_with(tag));
    if let Some(q) = queue {
        if ours("TMQ_NOQUEUE") {
            return MessagingError::queue_not_found(q.as_str());
        }
        if ours("TMQ_NODLQ") {
            return MessagingError::queue_not_found(dlq.unwrap_or(q).as_str());
        }
    }
    let message = scrub(&e.to_string(), url);
    if e.is_timeout() {
        return MessagingError::Timeout {
            operation,
            after: Duration::from_secs(10),
        };
    }
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.kind() == ErrorKind::AuthenticationFailed
    {
        return MessagingError::Connection {
            provider: PROVIDER,
            message,
        };
    }
    let retryable = matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        )
    ) || e.is_cluster_error()
        || e.code() == Some("BUSY")
        || e.code() == Some("LOADING")
        || e.code() == Some("READONLY");
    MessagingError::Provider {
        provider: PROVIDER,
        operation,
        message,
        retryable,
    }
}

/// A receipt code a script returned (see `scripts::DELETE`) as the refusal it is; `None` for
/// codes that took effect (1) or name an already deleted message (0, only for delete).
pub(super) fn receipt_refusal(queue: &QueueName, code: i64) -> Option<MessagingError> {
    let reason = match code {
        1 => return None,
        0 => "the message no longer exists",
        -1 => "the lease ended and the message was received again",
        -2 => "the message was moved to the dead-letter queue",
        -3 => "the receipt belongs to another queue (or to an earlier queue of this name)",
        -4 => "the queue has no dead-letter queue (created with max_receive_count 0)",
        _ => "unexpected reply from the receipt check",
    };
    Some(MessagingError::invalid_receipt(queue.as_str(), reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_errors_are_retryable_and_scrubbed() {
        let url = SecretUrl::new("redis://:pw-xyz@127.0.0.1:1");
        let io = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused redis://:pw-xyz@127.0.0.1:1",
        ));
        let e = map_redis(io, "send", None, None, &url);
        assert!(e.is_retryable(), "{e:?}");
        assert!(!format!("{e} {e:?}").contains("pw-xyz"));
    }

    #[test]
    fn receipt_codes() {
        let q = QueueName::new("q").unwrap();
        assert!(receipt_refusal(&q, 1).is_none());
        for code in [0, -1, -2, -3, -4, 7] {
            assert!(matches!(
                receipt_refusal(&q, code),
                Some(MessagingError::InvalidReceipt { .. })
            ));
        }
    }
}
