//! SQS errors as [`MessagingError`]s: a missing queue is `QueueNotFound`, a refused receipt
//! `InvalidReceipt`, throttling and server faults retryable, dispatch failures `Connection`,
//! timeouts `Timeout`; every text is scrubbed of the endpoint's secrets.

use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::error::MessagingError;
use crate::secret::{scrub, scrub_known, SecretUrl};
use crate::service::ProviderKind;

/// Codes SQS gives a missing queue (JSON protocol, and the query-compatible legacy code).
const NOT_FOUND: [&str; 2] = [
    "QueueDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
];
const BAD_RECEIPT: [&str; 3] = [
    "ReceiptHandleIsInvalid",
    "InvalidReceiptHandle",
    "MessageNotInflight",
];
const RETRYABLE: [&str; 9] = [
    "ThrottlingException",
    "RequestThrottled",
    "OverLimit",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KmsThrottled",
    "PurgeQueueInProgress",
    "QueueDeletedRecently",
];

/// Whether an error code names a missing queue.
#[inline]
pub(super) fn is_not_found_code(code: &str) -> bool {
    NOT_FOUND.contains(&code)
}

/// Whether an error code names a refused receipt.
#[inline]
pub(super) fn is_receipt_code(code: &str) -> bool {
    BAD_RECEIPT.contains(&code)
}

/// Whether a failed batch entry (or a call) with this code can succeed later.
#[inline]
pub(super) fn is_retryable_code(code: &str) -> bool {
    RETRYABLE.contains(&code)
}

/// Maps SDK errors of one operation on one queue.
#[derive(Clone, Copy)]
pub(super) struct ErrorMapper<'a> {
    pub endpoint: Option<&'a SecretUrl>,
    pub operation: &'static str,
    pub queue: &'a str,
    pub timeout: Duration,
}

impl ErrorMapper<'_> {
    pub(super) fn scrub(&self, text: &str) -> String {
        match self.endpoint {
            Some(url) => scrub(text, url),
            None => scrub_known(text),
        }
    }

    pub(super) fn map<E, R>(&self, e: SdkError<E, R>) -> MessagingError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let text = self.scrub(&DisplayErrorContext(&e).to_string());
        match &e {
            SdkError::TimeoutError(_) => MessagingError::Timeout {
                operation: self.operation,
                after: self.timeout,
            },
            SdkError::DispatchFailure(d) if d.is_timeout() => MessagingError::Timeout {
                operation: self.operation,
                after: self.timeout,
            },
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                MessagingError::Connection {
                    provider: ProviderKind::Sqs,
                    message: text,
                }
            }
            SdkError::ServiceError(s) => {
                let code = s.err().code().unwrap_or("");
                self.coded(code, text)
            }
            _ => MessagingError::Provider {
                provider: ProviderKind::Sqs,
                operation: self.operation,
                message: text,
                retryable: false,
            },
        }
    }

    /// The error for a service error code (also of a failed batch entry).
    pub(super) fn coded(&self, code: &str, text: String) -> MessagingError {
        if is_not_found_code(code) {
            MessagingError::queue_not_found(self.queue)
        } else if is_receipt_code(code) {
            MessagingError::invalid_receipt(self.queue, format!("SQS refused it: {text}"))
        } else {
            MessagingError::Provider {
                provider: ProviderKind::Sqs,
                operation: self.operation,
                message: text,
                retryable: is_retryable_code(code),
            }
        }
    }

    /// A permanent provider error with our own text.
    pub(super) fn permanent(&self, text: impl Into<String>) -> MessagingError {
        MessagingError::Provider {
            provider: ProviderKind::Sqs,
            operation: self.operation,
            message: text.into(),
            retryable: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        let m = ErrorMapper {
            endpoint: None,
            operation: "receive",
            queue: "q",
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(
            m.coded("AWS.SimpleQueueService.NonExistentQueue", "x".into()),
            MessagingError::QueueNotFound { .. }
        ));
        assert!(matches!(
            m.coded("ReceiptHandleIsInvalid", "x".into()),
            MessagingError::InvalidReceipt { .. }
        ));
        assert!(m.coded("RequestThrottled", "x".into()).is_retryable());
        assert!(!m.coded("InvalidParameterValue", "x".into()).is_retryable());
    }
}
