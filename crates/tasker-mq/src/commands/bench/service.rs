//! The provider under test, through `Arc<dyn MessagingService>` as the orchestrator uses it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::ReadyChunks;
use futures::StreamExt;
use tasker_messaging::{
    ConsumerExt, ConsumerOptions, MessageId, MessageStream, MessagingService, OutgoingMessage,
    QueueName, ReceivedMessage,
};

use super::target::{Client, SeenTx, Target, Watch};
use super::{Plan, Step};

/// Lease taken by every receive: long enough that nothing is redelivered during a step.
const LEASE: Duration = Duration::from_secs(30);
/// How long a stream consumer waits for a chunk before it checks whether the step is done
/// (a task whose share went to another consumer notices the end).
const CHUNK_WAIT: Duration = Duration::from_millis(100);
/// How long an empty `receive` waits for the provider's wakeup before receiving again.
const IDLE_WAIT: Duration = Duration::from_millis(5);

pub struct ServiceTarget {
    service: Arc<dyn MessagingService>,
    /// The queue of the step in progress, for Ctrl-C to delete.
    current: Arc<Mutex<Option<QueueName>>>,
}

impl ServiceTarget {
    pub fn new(service: Arc<dyn MessagingService>, current: Arc<Mutex<Option<QueueName>>>) -> Self {
        ServiceTarget { service, current }
    }

    fn set_current(&self, queue: Option<QueueName>) {
        if let Ok(mut slot) = self.current.lock() {
            *slot = queue;
        }
    }

    fn consumer_options(plan: &Plan) -> ConsumerOptions {
        ConsumerOptions {
            batch_size: plan.batch_size as usize,
            visibility_timeout: LEASE,
            ..ConsumerOptions::default()
        }
    }
}

impl Target for ServiceTarget {
    type Client = ServiceClient;

    const QUEUE_SUFFIX: &'static str = "";

    fn label(&self) -> String {
        self.service.provider().to_string()
    }

    async fn create_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        self.set_current(Some(queue.clone()));
        Ok(self.service.create_queue(queue).await?)
    }

    async fn delete_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        let deleted = self.service.delete_queue(queue).await;
        self.set_current(None);
        Ok(deleted?)
    }

    async fn client(
        &self,
        queue: &QueueName,
        step: Step,
        plan: &Plan,
    ) -> anyhow::Result<ServiceClient> {
        // Whatever the stream has ready, up to a batch: acks batch themselves under load and
        // never wait for a batch to fill. Built lazily: nothing is taken before the clock.
        let stream = (step == Step::ConsumeAck).then(|| {
            self.service
                .consume(queue, Self::consumer_options(plan))
                .ready_chunks(plan.batch_size as usize)
        });
        Ok(ServiceClient {
            service: self.service.clone(),
            queue: queue.clone(),
            templates: plan.templates.clone(),
            stream,
        })
    }

    async fn watch(&self, queue: &QueueName, plan: &Plan) -> anyhow::Result<Watch> {
        let mut stream = self.service.consume(queue, Self::consumer_options(plan));
        let (service, queue) = (self.service.clone(), queue.clone());
        let consumer = |seen: SeenTx| async move {
            while let Some(item) = stream.next().await {
                let at = std::time::Instant::now();
                match item {
                    Ok(message) => {
                        let _ = seen.send(Ok((Some(message.metadata.message_id), at)));
                        // Acked after reporting: the ack is not part of the latency.
                        if let Err(e) = service.delete_message(&queue, message.receipt()).await {
                            let _ = seen.send(Err(e.into()));
                        }
                    }
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => {
                        let _ = seen.send(Err(e.into()));
                        break;
                    }
                }
            }
        };
        Ok(Watch::spawn(consumer, async {}))
    }
}

pub struct ServiceClient {
    service: Arc<dyn MessagingService>,
    queue: QueueName,
    templates: Arc<Vec<OutgoingMessage>>,
    /// The consumer stream, for `consume_ack`; the other steps `receive`.
    stream: Option<ReadyChunks<MessageStream>>,
}

/// Acks `got` with one `delete_messages`; a refused receipt fails the step.
async fn ack_all(
    service: &dyn MessagingService,
    queue: &QueueName,
    got: &[ReceivedMessage],
) -> anyhow::Result<u64> {
    let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
    let outcome = service.delete_messages(queue, &receipts).await?;
    if let Some((receipt, e)) = outcome.rejected.into_iter().next() {
        anyhow::bail!("ack of receipt {receipt} refused: {e}");
    }
    Ok(got.len() as u64)
}

impl Client for ServiceClient {
    type Message = OutgoingMessage;

    fn message(&self, i: u64) -> OutgoingMessage {
        super::fresh(&self.templates, i)
    }

    fn message_id(message: &OutgoingMessage) -> Option<MessageId> {
        Some(message.message_id)
    }

    async fn send(&mut self, message: OutgoingMessage) -> anyhow::Result<()> {
        self.service.send(&self.queue, message).await?;
        Ok(())
    }

    async fn send_batch(&mut self, messages: Vec<OutgoingMessage>) -> anyhow::Result<()> {
        let k = messages.len();
        let ids = self.service.send_batch(&self.queue, messages).await?;
        anyhow::ensure!(
            ids.len() == k,
            "send_batch returned {} ids for {k}",
            ids.len()
        );
        Ok(())
    }

    async fn receive_ack(&mut self, max: u64) -> anyhow::Result<u64> {
        let got = match &mut self.stream {
            None => {
                self.service
                    .receive(&self.queue, max as usize, LEASE)
                    .await?
            }
            Some(chunks) => {
                let chunk = match tokio::time::timeout(CHUNK_WAIT, chunks.next()).await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => anyhow::bail!("the consumer stream ended"),
                    Err(_) => return Ok(0),
                };
                let mut got = Vec::with_capacity(chunk.len());
                for item in chunk {
                    match item {
                        Ok(message) => got.push(message),
                        Err(e) if e.is_retryable() => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                got
            }
        };
        if got.is_empty() {
            return Ok(0);
        }
        ack_all(&*self.service, &self.queue, &got).await
    }

    async fn idle(&mut self) {
        // A stream consumer already waited for its chunk.
        if self.stream.is_none() {
            self.service.wait_for_messages(&self.queue, IDLE_WAIT).await;
        }
    }
}
