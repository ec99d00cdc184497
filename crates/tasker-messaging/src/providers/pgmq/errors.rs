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
    dlq: Option<&QueueName>,
    url: &SecretUrl,
) -> MessagingError {
    let provider = ProviderKind::Pgmq;
    let message = scrub(&e.to_string(), url);
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if code == "42P01" {
                if let Some(q) = queue {
                    return MessagingError::queue_not_found(missing_queue(db.message(), q, dlq));
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

/// Which queue a "relation does not exist" names: statements that move messages touch the
/// queue and its dead-letter queue, and the missing one is the one to report. The DLQ's table
/// name has the queue's as a prefix, so only a message naming the DLQ's table matches it
/// (PostgreSQL quotes the relation name in every language).
fn missing_queue<'q>(message: &str, queue: &'q QueueName, dlq: Option<&'q QueueName>) -> &'q str {
    match dlq {
        Some(d) if names_table(message, d) => d.as_str(),
        _ => queue.as_str(),
    }
}

/// Whether `message` names the table `pgmq.q_<queue>` (whole name, not a prefix of another).
fn names_table(message: &str, queue: &QueueName) -> bool {
    let table = format!("q_{}", queue.as_str());
    message.match_indices(&table).any(|(at, _)| {
        let next = message[at + table.len()..].chars().next();
        !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '_')
    })
}

impl PgmqMessageService {
    pub(super) fn err(
        &self,
        e: sqlx::Error,
        operation: &'static str,
        queue: Option<&QueueName>,
    ) -> MessagingError {
        let dlq = queue.and_then(|q| self.dead_letter_name(q));
        let mapped = map_sqlx(
            e,
            operation,
            queue,
            dlq.as_ref(),
            &self.settings.database_url,
        );
        // Either table missing: the cached statements are wrong; the next lookup sees what
        // is there (and makes the dead-letter queue again for a queue with a limit).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_table_names_its_own_queue() {
        let q = QueueName::new("orders").unwrap();
        let d = QueueName::new("orders_dlq").unwrap();
        let dlq_missing = r#"relation "pgmq.q_orders_dlq" does not exist"#;
        let queue_missing = r#"relation "pgmq.q_orders" does not exist"#;
        assert_eq!(missing_queue(dlq_missing, &q, Some(&d)), "orders_dlq");
        assert_eq!(missing_queue(queue_missing, &q, Some(&d)), "orders");
        assert_eq!(missing_queue(dlq_missing, &q, None), "orders");
        // Another locale's quotes.
        assert_eq!(
            missing_queue(
                "la relation « pgmq.q_orders_dlq » n'existe pas",
                &q,
                Some(&d)
            ),
            "orders_dlq"
        );
    }
}
