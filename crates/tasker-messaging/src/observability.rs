//! Metrics for any service: a layer that counts messages and times operations with the
//! `metrics` facade, so whichever recorder the application installs (Prometheus in
//! `tasker-mq worker`) sees every provider the same way.
//!
//! Names (all labelled with `provider` and `queue`):
//! `tasker_messages_sent_total` (send, send_batch, AMQP publish),
//! `tasker_messages_received_total` (receive, PGMQ read_batch, native consumer stream items),
//! `tasker_messages_acked_total`, `tasker_messages_released_total` (visibility changes),
//! `tasker_messages_dead_lettered_total`, `tasker_messaging_errors_total` (also `operation`:
//! an [`Op`] name, or `consumer_stream` for a stream's error), and the histogram
//! `tasker_messaging_operation_seconds` (label `operation`, every call but waits and shutdown).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use futures::Stream;
use metrics::{counter, histogram, SharedString};

use crate::error::Result;
use crate::message::ReceivedMessage;
use crate::queue_name::QueueName;
use crate::resilience::layer::{
    Layer, LayerFuture, Next, PgmqRequest, Request, Response, StreamInfo,
};
use crate::resilience::{Layered, Op};
use crate::service::{MessageStream, MessagingService, ProviderKind};

/// Records metrics for every call that passes it, and for each item and error of a native
/// consumer stream. Outermost in a stack, it counts what callers see (one send however many
/// times a retry layer below repeated it).
#[derive(Clone, Debug, Default)]
pub struct MetricsLayer;

impl MetricsLayer {
    pub fn new() -> Self {
        MetricsLayer
    }
}

fn queue_label(queue: Option<&QueueName>) -> SharedString {
    queue.map_or(SharedString::const_str(""), |q| {
        SharedString::from(q.as_shared())
    })
}

fn count(name: &'static str, provider: ProviderKind, queue: &SharedString, n: u64) {
    if n > 0 {
        counter!(name, "provider" => provider.as_str(), "queue" => queue.clone()).increment(n);
    }
}

fn count_error(provider: ProviderKind, queue: &SharedString, operation: &'static str) {
    counter!(
        "tasker_messaging_errors_total",
        "provider" => provider.as_str(),
        "queue" => queue.clone(),
        "operation" => operation
    )
    .increment(1);
}

/// The message counter a successful call adds to, and by how much.
fn messages_counted(op: Op, response: &Response) -> Option<(&'static str, u64)> {
    match (op, response) {
        (Op::Send | Op::AmqpPublish, _) => Some(("tasker_messages_sent_total", 1)),
        (Op::SendBatch, Response::MessageIds(ids)) => {
            Some(("tasker_messages_sent_total", ids.len() as u64))
        }
        (Op::Receive | Op::PgmqReadBatch, Response::Messages(got)) => {
            Some(("tasker_messages_received_total", got.len() as u64))
        }
        (Op::DeleteMessage, _) => Some(("tasker_messages_acked_total", 1)),
        (Op::DeleteMessages, Response::Deleted(outcome)) => {
            Some(("tasker_messages_acked_total", outcome.deleted as u64))
        }
        (Op::ChangeVisibility, _) => Some(("tasker_messages_released_total", 1)),
        (Op::DeadLetter, _) => Some(("tasker_messages_dead_lettered_total", 1)),
        _ => None,
    }
}

impl Layer for MetricsLayer {
    fn call(&self, request: Request<'_>, next: Next<'_>) -> impl LayerFuture {
        async move {
            let op = request.op();
            if !op.is_guarded() {
                // Waits last as long as the queue is idle; timing them measures nothing.
                return next.run(request).await;
            }
            let queue = match &request {
                // The exchange is where an AMQP publish goes.
                Request::Amqp(crate::resilience::AmqpRequest::Publish { exchange, .. }) => {
                    SharedString::from(exchange.to_string())
                }
                Request::Pgmq(PgmqRequest::ReadBatch { queue, .. }) => queue_label(Some(queue)),
                other => queue_label(other.queue()),
            };
            let provider = next.service().provider();
            let started = Instant::now();
            let result = next.run(request).await;
            histogram!(
                "tasker_messaging_operation_seconds",
                "provider" => provider.as_str(),
                "operation" => op.as_str()
            )
            .record(started.elapsed().as_secs_f64());
            match &result {
                Ok(response) => {
                    if let Some((name, n)) = messages_counted(op, response) {
                        count(name, provider, &queue, n);
                    }
                }
                Err(_) => count_error(provider, &queue, op.as_str()),
            }
            result
        }
    }

    fn stream(&self, info: &StreamInfo<'_>, stream: MessageStream) -> MessageStream {
        Box::pin(CountedStream {
            inner: stream,
            provider: info.provider,
            queue: queue_label(Some(info.queue)),
        })
    }
}

/// A native consumer stream whose items count as received and whose errors as errors.
struct CountedStream {
    inner: MessageStream,
    provider: ProviderKind,
    queue: SharedString,
}

impl Stream for CountedStream {
    type Item = Result<ReceivedMessage>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = ready!(self.inner.as_mut().poll_next(cx));
        match &item {
            Some(Ok(_)) => count(
                "tasker_messages_received_total",
                self.provider,
                &self.queue,
                1,
            ),
            Some(Err(_)) => count_error(self.provider, &self.queue, "consumer_stream"),
            None => {}
        }
        Poll::Ready(item)
    }
}

/// A service with a [`MetricsLayer`] on top.
pub type MetricsService = Layered<MetricsLayer>;

impl MetricsService {
    pub fn new(inner: Arc<dyn MessagingService>) -> Self {
        Layered::wrap(inner, MetricsLayer)
    }
}

#[cfg(all(test, feature = "in-memory"))]
mod tests {
    use super::*;
    use crate::message::OutgoingMessage;
    use crate::InMemoryMessageService;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use std::time::Duration;

    #[test]
    fn counts_messages_per_queue() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let svc = MetricsService::new(Arc::new(InMemoryMessageService::default()));
                let q = QueueName::new("metrics_q").unwrap();
                svc.create_queue(&q).await.unwrap();
                let batch = (0..3).map(|i| OutgoingMessage::new(vec![i])).collect();
                svc.send_batch(&q, batch).await.unwrap();
                let got = svc.receive(&q, 10, Duration::from_secs(30)).await.unwrap();
                let receipts: Vec<_> = got[..2].iter().map(|m| m.receipt().clone()).collect();
                svc.delete_messages(&q, &receipts).await.unwrap();
                svc.dead_letter_message(&q, got[2].receipt(), "bad")
                    .await
                    .unwrap();
                let missing = QueueName::new("metrics_missing").unwrap();
                assert!(svc.send(&missing, OutgoingMessage::new("x")).await.is_err());
            });
        });
        let counters: std::collections::HashMap<String, u64> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Counter(n) => {
                    let labels: Vec<String> =
                        key.key().labels().map(|l| l.value().to_owned()).collect();
                    Some((format!("{}{labels:?}", key.key().name()), n))
                }
                _ => None,
            })
            .collect();
        let get = |name: &str| {
            counters
                .iter()
                .find(|(k, _)| k.starts_with(name) && k.contains("metrics_q"))
                .map(|(_, v)| *v)
        };
        assert_eq!(get("tasker_messages_sent_total"), Some(3), "{counters:?}");
        assert_eq!(get("tasker_messages_received_total"), Some(3));
        assert_eq!(get("tasker_messages_acked_total"), Some(2));
        assert_eq!(get("tasker_messages_dead_lettered_total"), Some(1));
        assert!(
            counters
                .keys()
                .any(|k| k.starts_with("tasker_messaging_errors_total")
                    && k.contains("metrics_missing")),
            "{counters:?}"
        );
    }
}
