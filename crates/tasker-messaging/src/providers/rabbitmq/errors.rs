//! Errors as [`MessagingError`]s: lapin's (a missing queue, retryable or not, passwords
//! scrubbed) and receipts the lease table refused.

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::ErrorKind;

use super::leases::{Ended, ReceiptProblem};
use super::Inner;
use crate::error::MessagingError;
use crate::queue_name::QueueName;
use crate::secret::{scrub, SecretUrl};
use crate::service::ProviderKind;

/// Turns lapin errors into `MessagingError`s, passwords scrubbed.
#[derive(Clone)]
pub(super) struct ErrorMapper {
    pub url: SecretUrl,
}

impl ErrorMapper {
    pub fn map(
        &self,
        operation: &'static str,
        queue: Option<&QueueName>,
        error: lapin::Error,
    ) -> MessagingError {
        let message = scrub(&error.to_string(), &self.url);
        match error.kind() {
            ErrorKind::ProtocolError(amqp) => match amqp.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) if queue.is_some() => {
                    MessagingError::QueueNotFound {
                        queue: queue.map(|q| q.as_str().to_owned()).unwrap_or_default(),
                    }
                }
                AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => MessagingError::Provider {
                    provider: ProviderKind::Rabbitmq,
                    operation,
                    message,
                    retryable: true,
                },
                AMQPErrorKind::Soft(_) => MessagingError::Provider {
                    provider: ProviderKind::Rabbitmq,
                    operation,
                    message,
                    retryable: false,
                },
                AMQPErrorKind::Hard(_) => MessagingError::Connection {
                    provider: ProviderKind::Rabbitmq,
                    message,
                },
            },
            ErrorKind::IOError(_)
            | ErrorKind::RuntimeShutdownError(_)
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::InvalidChannelState(..)
            | ErrorKind::InvalidChannel(_)
            | ErrorKind::MissingHeartbeatError
            | ErrorKind::ChannelsLimitReached => MessagingError::Connection {
                provider: ProviderKind::Rabbitmq,
                message,
            },
            _ => MessagingError::Provider {
                provider: ProviderKind::Rabbitmq,
                operation,
                message,
                retryable: false,
            },
        }
    }
}

pub(super) fn invalid(queue: &QueueName, problem: ReceiptProblem) -> MessagingError {
    let reason = match problem {
        ReceiptProblem::Malformed => "not a RabbitMQ receipt",
        ReceiptProblem::OtherQueue => "the receipt belongs to another queue",
        ReceiptProblem::Unknown => "the receipt is unknown to this service (leases live on the connection that received the message)",
        ReceiptProblem::Ended(Ended::Released) => {
            "the lease ended and the message was handed back for redelivery"
        }
        ReceiptProblem::Ended(Ended::Lost) => {
            "the connection holding the lease closed; the message will be redelivered"
        }
        ReceiptProblem::Ended(Ended::Deleted) => "the message was deleted",
        ReceiptProblem::Ended(Ended::DeadLettered) => "the message was dead-lettered",
        ReceiptProblem::Ended(Ended::QueueDeleted) => "the queue was deleted with the message",
    };
    MessagingError::InvalidReceipt {
        queue: queue.as_str().to_owned(),
        reason: reason.into(),
    }
}

pub(super) fn is_soft(e: &lapin::Error, soft: AMQPSoftError) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(p) if *p.kind() == AMQPErrorKind::Soft(soft))
}

impl Inner {
    pub(super) fn errors(&self) -> &ErrorMapper {
        &self.connector.errors
    }

    pub(super) fn map(
        &self,
        op: &'static str,
        queue: Option<&QueueName>,
        e: lapin::Error,
    ) -> MessagingError {
        self.errors().map(op, queue, e)
    }
}
