//! The one layer model: a [`Layer`] sees every call made to the service it wraps, as a
//! [`Request`], and answers it, usually by passing it on with [`Next::run`].
//!
//! In the spirit of tower's `Layer` + `Service`: the trait object the rest of the crate uses
//! stays [`MessagingService`]; a layer is wrapped around one by [`Layered`](super::Layered) (see
//! `layered.rs`), which turns each trait method into a `Request`, runs the layer's
//! [`Layer::call`], and turns the [`Response`] back. So a layer writes no per-operation
//! delegation: it matches the requests it cares about and passes the rest on.
//!
//! What a layer sees:
//! * every operation of the trait that does I/O, plus `wait_for_messages` and `shutdown`;
//! * every call made through the `pgmq()` / `amqp()` extensions of a layered service
//!   ([`Request::Pgmq`], [`Request::Amqp`]);
//! * each item and error of a native consumer stream, through [`Layer::stream`]. A consumer
//!   stream without a native one is receive in a loop over the whole stack, so each layer sees
//!   its receives and waits as calls.
//!
//! Compose layers with [`super::ServiceStack`].

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;

use serde_json::Value;

use super::Op;
use crate::error::{MessagingError, Result};
use crate::message::{MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::resources::ResourceRequirements;
use crate::service::{
    Capability, ConsumerOptions, DeleteOutcome, ExchangeKind, MessageStream, MessagingHealth,
    MessagingService, ProviderKind, QueueOptions, QueueStats,
};

/// One call on a service, with its arguments, as a layer sees it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Request<'a> {
    Initialize,
    HealthCheck,
    Shutdown,
    CreateQueue {
        queue: &'a QueueName,
        options: &'a QueueOptions,
    },
    Send {
        queue: &'a QueueName,
        message: OutgoingMessage,
    },
    SendBatch {
        queue: &'a QueueName,
        messages: Vec<OutgoingMessage>,
    },
    Receive {
        queue: &'a QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    },
    DeleteMessage {
        queue: &'a QueueName,
        receipt: &'a ReceiptHandle,
    },
    DeleteMessages {
        queue: &'a QueueName,
        receipts: &'a [ReceiptHandle],
    },
    ChangeVisibility {
        queue: &'a QueueName,
        receipt: &'a ReceiptHandle,
        visibility_timeout: Duration,
    },
    DeadLetter {
        queue: &'a QueueName,
        receipt: &'a ReceiptHandle,
        reason: &'a str,
    },
    Redrive {
        queue: &'a QueueName,
        max_messages: usize,
    },
    Stats {
        queue: &'a QueueName,
    },
    Purge {
        queue: &'a QueueName,
    },
    DeleteQueue {
        queue: &'a QueueName,
    },
    /// `wait_for_messages`: answered with [`Response::Done`]. An error ends the wait at once
    /// and is not seen by the caller (the wait then sleeps out `max_wait`).
    WaitForMessages {
        queue: &'a QueueName,
        max_wait: Duration,
    },
    /// A call made through [`MessagingService::pgmq`].
    Pgmq(PgmqRequest<'a>),
    /// A call made through [`MessagingService::amqp`].
    Amqp(AmqpRequest<'a>),
}

/// The calls of [`crate::PgmqExtensions`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum PgmqRequest<'a> {
    CreateQueueWithVt {
        queue: &'a QueueName,
        vt: Duration,
    },
    ReadBatch {
        queue: &'a QueueName,
        vt: Duration,
        limit: usize,
    },
    Archive {
        queue: &'a QueueName,
        msg_ids: &'a [i64],
    },
    Metrics {
        queue: &'a QueueName,
    },
}

/// The calls of [`crate::AmqpExtensions`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AmqpRequest<'a> {
    DeclareExchange {
        name: &'a str,
        kind: ExchangeKind,
        durable: bool,
    },
    BindQueue {
        queue: &'a QueueName,
        exchange: &'a str,
        routing_key: &'a str,
    },
    Publish {
        exchange: &'a str,
        routing_key: &'a str,
        message: OutgoingMessage,
    },
    SetQos {
        prefetch_count: u16,
    },
    /// Opening a native push consumer; its items then pass [`Layer::stream`].
    ConsumerStream {
        queue: &'a QueueName,
        options: &'a ConsumerOptions,
    },
}

impl Request<'_> {
    /// Which operation this is.
    pub fn op(&self) -> Op {
        match self {
            Request::Initialize => Op::Initialize,
            Request::HealthCheck => Op::HealthCheck,
            Request::Shutdown => Op::Shutdown,
            Request::CreateQueue { .. } => Op::CreateQueue,
            Request::Send { .. } => Op::Send,
            Request::SendBatch { .. } => Op::SendBatch,
            Request::Receive { .. } => Op::Receive,
            Request::DeleteMessage { .. } => Op::DeleteMessage,
            Request::DeleteMessages { .. } => Op::DeleteMessages,
            Request::ChangeVisibility { .. } => Op::ChangeVisibility,
            Request::DeadLetter { .. } => Op::DeadLetter,
            Request::Redrive { .. } => Op::Redrive,
            Request::Stats { .. } => Op::Stats,
            Request::Purge { .. } => Op::Purge,
            Request::DeleteQueue { .. } => Op::DeleteQueue,
            Request::WaitForMessages { .. } => Op::WaitForMessages,
            Request::Pgmq(PgmqRequest::CreateQueueWithVt { .. }) => Op::PgmqCreateQueueWithVt,
            Request::Pgmq(PgmqRequest::ReadBatch { .. }) => Op::PgmqReadBatch,
            Request::Pgmq(PgmqRequest::Archive { .. }) => Op::PgmqArchive,
            Request::Pgmq(PgmqRequest::Metrics { .. }) => Op::PgmqMetrics,
            Request::Amqp(AmqpRequest::DeclareExchange { .. }) => Op::AmqpDeclareExchange,
            Request::Amqp(AmqpRequest::BindQueue { .. }) => Op::AmqpBindQueue,
            Request::Amqp(AmqpRequest::Publish { .. }) => Op::AmqpPublish,
            Request::Amqp(AmqpRequest::SetQos { .. }) => Op::AmqpSetQos,
            Request::Amqp(AmqpRequest::ConsumerStream { .. }) => Op::AmqpConsumerStream,
        }
    }

    /// The queue the call is about, if it names one.
    pub fn queue(&self) -> Option<&QueueName> {
        match self {
            Request::Initialize
            | Request::HealthCheck
            | Request::Shutdown
            | Request::Amqp(AmqpRequest::DeclareExchange { .. })
            | Request::Amqp(AmqpRequest::Publish { .. })
            | Request::Amqp(AmqpRequest::SetQos { .. }) => None,
            Request::CreateQueue { queue, .. }
            | Request::Send { queue, .. }
            | Request::SendBatch { queue, .. }
            | Request::Receive { queue, .. }
            | Request::DeleteMessage { queue, .. }
            | Request::DeleteMessages { queue, .. }
            | Request::ChangeVisibility { queue, .. }
            | Request::DeadLetter { queue, .. }
            | Request::Redrive { queue, .. }
            | Request::Stats { queue }
            | Request::Purge { queue }
            | Request::DeleteQueue { queue }
            | Request::WaitForMessages { queue, .. }
            | Request::Pgmq(PgmqRequest::CreateQueueWithVt { queue, .. })
            | Request::Pgmq(PgmqRequest::ReadBatch { queue, .. })
            | Request::Pgmq(PgmqRequest::Archive { queue, .. })
            | Request::Pgmq(PgmqRequest::Metrics { queue })
            | Request::Amqp(AmqpRequest::BindQueue { queue, .. })
            | Request::Amqp(AmqpRequest::ConsumerStream { queue, .. }) => Some(queue),
        }
    }

    /// The outgoing messages of a send (`send`, `send_batch`, AMQP publish), for layers that
    /// change or inspect them.
    pub fn outgoing_mut(&mut self) -> &mut [OutgoingMessage] {
        match self {
            Request::Send { message, .. } | Request::Amqp(AmqpRequest::Publish { message, .. }) => {
                std::slice::from_mut(message)
            }
            Request::SendBatch { messages, .. } => messages,
            _ => &mut [],
        }
    }
}

/// The answer to a [`Request`]; each request has one variant (named in `Layered`).
#[non_exhaustive]
pub enum Response {
    /// `()`: initialize, create, delete, visibility, dead-letter, waits, AMQP admin calls.
    Done,
    MessageId(MessageId),
    MessageIds(Vec<MessageId>),
    Messages(Vec<ReceivedMessage>),
    Deleted(DeleteOutcome),
    /// Redrive, purge, PGMQ archive.
    Count(u64),
    Stats(QueueStats),
    Health(MessagingHealth),
    /// PGMQ metrics.
    Json(Value),
    /// An AMQP consumer stream.
    Stream(MessageStream),
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Response::Done => "Done",
            Response::MessageId(_) => "MessageId",
            Response::MessageIds(_) => "MessageIds",
            Response::Messages(_) => "Messages",
            Response::Deleted(_) => "Deleted",
            Response::Count(_) => "Count",
            Response::Stats(_) => "Stats",
            Response::Health(_) => "Health",
            Response::Json(_) => "Json",
            Response::Stream(_) => "Stream",
        };
        f.write_str(name)
    }
}

impl Response {
    /// The error when a layer answered `op` with the wrong variant (a bug in that layer).
    pub(crate) fn mismatch(self, provider: ProviderKind, op: Op) -> MessagingError {
        MessagingError::Provider {
            provider,
            operation: op.as_str(),
            message: format!("a layer answered {op} with {self:?}"),
            retryable: false,
        }
    }
}

/// What a layer knows about a native consumer stream it wraps.
#[derive(Clone, Copy, Debug)]
pub struct StreamInfo<'a> {
    pub queue: &'a QueueName,
    pub options: &'a ConsumerOptions,
    pub provider: ProviderKind,
}

/// The rest of the stack below a layer: run a request on it, or ask whether it would admit one.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    inner: &'a dyn MessagingService,
}

impl<'a> Next<'a> {
    pub(crate) fn new(inner: &'a dyn MessagingService) -> Self {
        Next { inner }
    }

    /// Passes `request` to the service below. May be called more than once (retry) or not at
    /// all (an open breaker).
    pub fn run(self, request: Request<'a>) -> impl Future<Output = Result<Response>> + Send + 'a {
        dispatch(self.inner, request)
    }

    /// Whether the service below would admit a call now (`Err(CircuitOpen)` while a breaker
    /// below is open). Cheap; no I/O.
    pub fn ready(&self) -> Result<()> {
        self.inner.ready()
    }

    /// The service below, for reads that are not calls (provider, capabilities).
    pub fn service(&self) -> &'a dyn MessagingService {
        self.inner
    }
}

/// What [`Layer::call`] returns: a `Send` future of the response (any such future is one).
pub trait LayerFuture: Future<Output = Result<Response>> + Send {}

impl<F: Future<Output = Result<Response>> + Send> LayerFuture for F {}

/// Behaviour around a service. Implement [`Layer::call`] (and, if the layer cares about
/// consumer streams, [`Layer::stream`]); wrap a service with [`super::ServiceStack::layer`].
///
/// Every default passes through, so a layer only says what it changes.
pub trait Layer: Send + Sync + 'static {
    /// Handles one call: inspect or change the request, pass it on with `next.run`, inspect
    /// or change the response. Answer each request with its own [`Response`] variant.
    fn call(&self, request: Request<'_>, next: Next<'_>) -> impl LayerFuture {
        async move { next.run(request).await }
    }

    /// Wraps a native consumer stream (the provider's push subscription, or an AMQP consumer
    /// stream) to see or change each item and error.
    fn stream(&self, info: &StreamInfo<'_>, stream: MessageStream) -> MessageStream {
        let _ = info;
        stream
    }

    /// Whether consumers may use the provider's native stream under this layer; `false`
    /// makes `consume` receive in a loop through the layer instead (shadow mode needs that).
    fn allows_native_stream(&self) -> bool {
        true
    }

    /// Whether a call would be admitted now; `Err` stops a caller above (retry) from trying.
    fn ready(&self, next: Next<'_>) -> Result<()> {
        next.ready()
    }

    /// What the stack holds with this layer on it.
    fn requirements(&self, next: Next<'_>) -> ResourceRequirements {
        next.service().resource_requirements()
    }
}

/// The future of a request passed below: the trait call's own (boxed) future, and which
/// [`Response`] variant its output becomes. Building it is synchronous and holds no copy of the
/// request, so a layer that refuses a call (an open breaker) pays for nothing below it.
enum Pending<'a> {
    Done(BoxFuture<'a, Result<()>>),
    Wait(BoxFuture<'a, ()>),
    MessageId(BoxFuture<'a, Result<MessageId>>),
    MessageIds(BoxFuture<'a, Result<Vec<MessageId>>>),
    Messages(BoxFuture<'a, Result<Vec<ReceivedMessage>>>),
    Deleted(BoxFuture<'a, Result<DeleteOutcome>>),
    Count(BoxFuture<'a, Result<u64>>),
    Stats(BoxFuture<'a, Result<QueueStats>>),
    Health(BoxFuture<'a, Result<MessagingHealth>>),
    Json(BoxFuture<'a, Result<Value>>),
    Stream(BoxFuture<'a, Result<MessageStream>>),
    Failed(Option<MessagingError>),
}

impl Future for Pending<'_> {
    type Output = Result<Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        use Response as R;
        Poll::Ready(match self.get_mut() {
            Pending::Done(f) => ready!(f.as_mut().poll(cx)).map(|()| R::Done),
            Pending::Wait(f) => {
                ready!(f.as_mut().poll(cx));
                Ok(R::Done)
            }
            Pending::MessageId(f) => ready!(f.as_mut().poll(cx)).map(R::MessageId),
            Pending::MessageIds(f) => ready!(f.as_mut().poll(cx)).map(R::MessageIds),
            Pending::Messages(f) => ready!(f.as_mut().poll(cx)).map(R::Messages),
            Pending::Deleted(f) => ready!(f.as_mut().poll(cx)).map(R::Deleted),
            Pending::Count(f) => ready!(f.as_mut().poll(cx)).map(R::Count),
            Pending::Stats(f) => ready!(f.as_mut().poll(cx)).map(R::Stats),
            Pending::Health(f) => ready!(f.as_mut().poll(cx)).map(R::Health),
            Pending::Json(f) => ready!(f.as_mut().poll(cx)).map(R::Json),
            Pending::Stream(f) => ready!(f.as_mut().poll(cx)).map(R::Stream),
            Pending::Failed(e) => Err(e.take().unwrap_or_else(|| {
                MessagingError::NotInitialized("a finished call was polled again".into())
            })),
        })
    }
}

fn unsupported(service: &dyn MessagingService, capability: Capability) -> Pending<'static> {
    Pending::Failed(Some(MessagingError::Unsupported {
        provider: service.provider(),
        capability,
    }))
}

/// Runs `request` on `service`: the one place a [`Request`] becomes a trait call.
pub(crate) fn dispatch<'a>(
    service: &'a dyn MessagingService,
    request: Request<'a>,
) -> impl Future<Output = Result<Response>> + Send + 'a {
    use Pending as P;
    match request {
        Request::Initialize => P::Done(service.initialize()),
        Request::HealthCheck => P::Health(service.health_check()),
        Request::Shutdown => P::Done(service.shutdown()),
        Request::CreateQueue { queue, options } => {
            P::Done(service.create_queue_with(queue, options))
        }
        Request::Send { queue, message } => P::MessageId(service.send(queue, message)),
        Request::SendBatch { queue, messages } => {
            P::MessageIds(service.send_batch(queue, messages))
        }
        Request::Receive {
            queue,
            max_messages,
            visibility_timeout,
        } => P::Messages(service.receive(queue, max_messages, visibility_timeout)),
        Request::DeleteMessage { queue, receipt } => {
            P::Done(service.delete_message(queue, receipt))
        }
        Request::DeleteMessages { queue, receipts } => {
            P::Deleted(service.delete_messages(queue, receipts))
        }
        Request::ChangeVisibility {
            queue,
            receipt,
            visibility_timeout,
        } => P::Done(service.change_message_visibility(queue, receipt, visibility_timeout)),
        Request::DeadLetter {
            queue,
            receipt,
            reason,
        } => P::Done(service.dead_letter_message(queue, receipt, reason)),
        Request::Redrive {
            queue,
            max_messages,
        } => P::Count(service.redrive_dead_letters(queue, max_messages)),
        Request::Stats { queue } => P::Stats(service.get_queue_stats(queue)),
        Request::Purge { queue } => P::Count(service.purge_queue(queue)),
        Request::DeleteQueue { queue } => P::Done(service.delete_queue(queue)),
        Request::WaitForMessages { queue, max_wait } => {
            P::Wait(service.wait_for_messages(queue, max_wait))
        }
        Request::Pgmq(call) => match service.pgmq() {
            None => unsupported(service, Capability::PgmqExtensions),
            Some(ext) => match call {
                PgmqRequest::CreateQueueWithVt { queue, vt } => {
                    P::Done(ext.create_queue_with_vt(queue, vt))
                }
                PgmqRequest::ReadBatch { queue, vt, limit } => {
                    P::Messages(ext.read_batch(queue, vt, limit))
                }
                PgmqRequest::Archive { queue, msg_ids } => {
                    P::Count(ext.archive_messages(queue, msg_ids))
                }
                PgmqRequest::Metrics { queue } => P::Json(ext.get_metrics(queue)),
            },
        },
        Request::Amqp(call) => match service.amqp() {
            None => unsupported(service, Capability::AmqpExtensions),
            Some(ext) => match call {
                AmqpRequest::DeclareExchange {
                    name,
                    kind,
                    durable,
                } => P::Done(ext.declare_exchange(name, kind, durable)),
                AmqpRequest::BindQueue {
                    queue,
                    exchange,
                    routing_key,
                } => P::Done(ext.bind_queue(queue, exchange, routing_key)),
                AmqpRequest::Publish {
                    exchange,
                    routing_key,
                    message,
                } => P::MessageId(ext.publish_to_exchange(exchange, routing_key, message)),
                AmqpRequest::SetQos { prefetch_count } => P::Done(ext.set_qos(prefetch_count)),
                AmqpRequest::ConsumerStream { queue, options } => {
                    P::Stream(ext.create_consumer_stream(queue, options))
                }
            },
        },
    }
}
