//! The typed layer: serde types in and out of any `MessagingService`, including
//! `dyn MessagingService`, without making the service trait generic.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::consumer::polling_stream;
use crate::error::{MessagingError, Result};
use crate::message::{
    DeadLetterReason, MessageId, OutgoingMessage, QueueMessage, QueuedMessage, ReceivedMessage,
};
use crate::queue_name::QueueName;
use crate::service::{ConsumerOptions, MessageStream, MessagingService};

/// A received message whose payload did not decode into the requested type. It keeps its
/// lease: dead-letter it, release it, or let the lease run out; it is never dropped.
#[derive(Debug)]
pub struct UndecodableMessage {
    pub message: Box<ReceivedMessage>,
    pub error: MessagingError,
}

/// Generic send and receive for serde types, on every service (blanket-implemented).
#[async_trait]
pub trait MessagingServiceExt: MessagingService {
    /// Encodes `message` as JSON and sends it with its ids.
    async fn send_message<T: QueueMessage>(
        &self,
        queue: &QueueName,
        message: &T,
    ) -> Result<MessageId> {
        self.send(queue, OutgoingMessage::json(message)?).await
    }

    /// Like `send_message`, not receivable before `delay`.
    async fn send_message_delayed<T: QueueMessage>(
        &self,
        queue: &QueueName,
        message: &T,
        delay: Duration,
    ) -> Result<MessageId> {
        self.send(queue, OutgoingMessage::json(message)?.with_delay(delay))
            .await
    }

    /// Encodes every message, then sends them as one batch; ids in order.
    async fn send_messages<T: QueueMessage>(
        &self,
        queue: &QueueName,
        messages: &[T],
    ) -> Result<Vec<MessageId>> {
        let outgoing = messages
            .iter()
            .map(OutgoingMessage::json)
            .collect::<Result<Vec<_>>>()?;
        self.send_batch(queue, outgoing).await
    }

    /// Receives and decodes. A message that does not decode into `T` is moved to the
    /// dead-letter queue with the decode error as its reason (never dropped, never returned
    /// as garbage); use `try_receive_messages` to handle such messages yourself.
    async fn receive_messages<T: QueueMessage>(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueuedMessage<T>>> {
        let batch = self
            .try_receive_messages::<T>(queue, max_messages, visibility_timeout)
            .await?;
        let mut decoded = Vec::with_capacity(batch.len());
        for item in batch {
            match item {
                Ok(message) => decoded.push(message),
                Err(bad) => {
                    tracing::warn!(
                        queue = %queue,
                        message_id = %bad.message.metadata.message_id,
                        error = %bad.error,
                        "dead-lettering a message that does not decode"
                    );
                    let reason = DeadLetterReason::Undecodable {
                        error: bad.error.to_string(),
                    };
                    self.dead_letter_message(queue, bad.message.receipt(), &reason.to_string())
                        .await?;
                }
            }
        }
        Ok(decoded)
    }

    /// Receives and decodes, reporting each undecodable message as a typed error with its
    /// lease intact.
    async fn try_receive_messages<T: QueueMessage>(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<std::result::Result<QueuedMessage<T>, UndecodableMessage>>> {
        let raw = self
            .receive(queue, max_messages, visibility_timeout)
            .await?;
        Ok(raw
            .into_iter()
            .map(|message| match message.decode::<T>() {
                Ok(value) => Ok(QueuedMessage {
                    metadata: message.metadata,
                    message: value,
                }),
                Err(error) => Err(UndecodableMessage {
                    message: Box::new(message),
                    error,
                }),
            })
            .collect())
    }

    /// Deletes (acknowledges) a received typed message.
    async fn ack<T: Send + Sync>(
        &self,
        queue: &QueueName,
        message: &QueuedMessage<T>,
    ) -> Result<()> {
        self.delete_message(queue, message.receipt()).await
    }
}

impl<S: MessagingService + ?Sized> MessagingServiceExt for S {}

/// Consumer streams on a shared service.
pub trait ConsumerExt {
    /// A stream of leased messages from `queue`: the provider's native push stream when it
    /// has one, otherwise receive in a loop that waits (bounded backoff, provider wakeups)
    /// while the queue is empty. Dropping the stream stops it; nothing runs in the background.
    fn consume(&self, queue: &QueueName, options: ConsumerOptions) -> MessageStream;
}

impl<S: MessagingService + ?Sized> ConsumerExt for Arc<S> {
    fn consume(&self, queue: &QueueName, options: ConsumerOptions) -> MessageStream {
        match self.native_consumer_stream(queue, &options) {
            Some(stream) => stream,
            None => polling_stream(Arc::clone(self), queue.clone(), options),
        }
    }
}
