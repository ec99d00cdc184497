//! Errors as [`MessagingError`]s: rdkafka's (a missing topic is `QueueNotFound`, transport
//! trouble is a retryable `Connection`, a timeout is `Timeout`), and receipts the lease table
//! refused. The broker list holds no credentials (they are refused in the settings), so
//! nothing here can show a password.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::leases::Refused;
use crate::error::MessagingError;
use crate::queue_name::QueueName;
use crate::service::ProviderKind;

/// Whether an rdkafka error code means the topic does not exist.
pub(super) fn is_missing_topic(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
    )
}

fn is_transport(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
    )
}

/// Maps an rdkafka error of `operation` (on `queue`, when it concerns one).
pub(super) fn map(
    operation: &'static str,
    queue: Option<&QueueName>,
    error: &KafkaError,
    timeout: Duration,
) -> MessagingError {
    let code = error.rdkafka_error_code();
    match code {
        Some(c) if is_missing_topic(c) && queue.is_some() => MessagingError::QueueNotFound {
            queue: queue.map(|q| q.as_str().to_owned()).unwrap_or_default(),
        },
        Some(RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::MessageTimedOut) => {
            MessagingError::Timeout {
                operation,
                after: timeout,
            }
        }
        Some(c) if is_transport(c) => MessagingError::Connection {
            provider: ProviderKind::Kafka,
            message: format!("{operation}: {error}"),
        },
        Some(c) => MessagingError::Provider {
            provider: ProviderKind::Kafka,
            operation,
            message: error.to_string(),
            retryable: matches!(
                c,
                RDKafkaErrorCode::QueueFull
                    | RDKafkaErrorCode::RequestTimedOut
                    | RDKafkaErrorCode::CoordinatorNotAvailable
                    | RDKafkaErrorCode::NotCoordinator
                    | RDKafkaErrorCode::CoordinatorLoadInProgress
                    | RDKafkaErrorCode::RebalanceInProgress
                    | RDKafkaErrorCode::NotEnoughReplicas
                    | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                    | RDKafkaErrorCode::ThrottlingQuotaExceeded
            ),
        },
        None => MessagingError::Provider {
            provider: ProviderKind::Kafka,
            operation,
            message: error.to_string(),
            retryable: matches!(error, KafkaError::Canceled),
        },
    }
}

/// A provider error that is not rdkafka's (a task that failed, a record refused).
pub(super) fn provider(operation: &'static str, message: impl Into<String>) -> MessagingError {
    MessagingError::Provider {
        provider: ProviderKind::Kafka,
        operation,
        message: message.into(),
        retryable: true,
    }
}

/// A receipt the lease table refused.
pub(super) fn refused(queue: &QueueName, why: Refused) -> MessagingError {
    let reason = match why {
        Refused::NotThisQueue => {
            "not a receipt of this queue (another queue, an earlier queue \
                                  of this name, or malformed)"
        }
        Refused::Stale => "the lease ended and the message was received again",
        Refused::DeadLettered => "the message was moved to the dead-letter queue",
        Refused::Moving => "the message is being moved to another queue",
    };
    MessagingError::invalid_receipt(queue.as_str(), reason)
}
