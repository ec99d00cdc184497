//! Errors as [`MessagingError`]s: sqlx's (retryable or not, never with the URL's password) and
//! a receipt the fencing refused.

use std::time::Duration;

use super::PgmqMessageService;
use crate::error::MessagingError;
use crate::queue_name::QueueName;
use crate::secret::{scrub, SecretUrl};
use crate::service::ProviderKind;

/// Maps a sqlx error to ours: connection trouble is retryable, a missing table is a missing
/// queue, and nothing carries the URL's password.
pub(crate) fn map_sqlx(
    e: sqlx::Error,
    operation: &'static str,
    queue: Option<&QueueName>,
    url: &SecretUrl,
) -> MessagingError {
    let provider = ProviderKind::Pgmq;
    let message = scrub(&e.to_string(), url);
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if code == "42P01" {
                if let Some(q) = queue {
                    return MessagingError::queue_not_found(q.as_str());
                }
            }
            // Connection exceptions, operator intervention, resources, serialization and
            // deadlock, lock not available: the same call may work later.
            let retryable = code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "40001"
                || code == "40P01"
                || code == "55P03";
            MessagingError::Provider {
                provider,
                operation,
                message,
                retryable,
            }
        }
        sqlx::Error::PoolTimedOut => MessagingError::Timeout {
            operation,
            after: Duration::from_secs(10),
        },
        sqlx::Error::PoolClosed => {
            MessagingError::NotInitialized("pgmq service was shut down".into())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => MessagingError::Connection { provider, message },
        sqlx::Error::Configuration(_) => {
            MessagingError::config("connection.pgmq.database_url", message)
        }
        _ => MessagingError::Provider {
            provider,
            operation,
            message,
            retryable: false,
        },
    }
}

impl PgmqMessageService {
    pub(super) fn err(
        &self,
        e: sqlx::Error,
        operation: &'static str,
        queue: Option<&QueueName>,
    ) -> MessagingError {
        let mapped = map_sqlx(e, operation, queue, &self.settings.database_url);
        if let (MessagingError::QueueNotFound { .. }, Some(q)) = (&mapped, queue) {
            self.queues.write().remove(q);
        }
        mapped
    }

    /// A receipt the statement did not match: the message is gone (`None`), or it is leased
    /// again under a newer receipt.
    pub(super) fn lease_error(queue: &QueueName, current_ct: Option<i32>) -> MessagingError {
        match current_ct {
            None => MessagingError::invalid_receipt(queue.as_str(), "the message no longer exists"),
            Some(_) => MessagingError::invalid_receipt(
                queue.as_str(),
                "the lease ended and the message was received again",
            ),
        }
    }
}
