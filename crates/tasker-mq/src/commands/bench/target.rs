//! What a bench target implements: the operations of the steps, and nothing of the timing.
//!
//! The provider (`service.rs`) and every raw baseline (`raw_*.rs`) implement [`Target`] and
//! [`Client`]; `timed.rs` runs every step of every one of them through the same loop.

use std::future::Future;
use std::time::{Duration, Instant};

use tasker_messaging::{MessageId, QueueName};
use tokio::sync::{mpsc, oneshot};

use super::{Plan, Step};

/// How long the latency step waits for one message before it calls it lost.
const DELIVERY_LIMIT: Duration = Duration::from_secs(10);

/// One side of a comparison: what it takes to run every step on a backend.
pub trait Target: Send + Sync + 'static {
    /// One task's handle on a step's queue (a channel, a pool handle, a stream...).
    type Client: Client;

    /// Appended to the step's queue name, so the provider and a raw client never share one.
    const QUEUE_SUFFIX: &'static str = "_raw";

    /// Names the client in the report, e.g. "pgmq crate 0.33".
    fn label(&self) -> String;

    /// Whether this target has an equivalent of `step`; a raw client without one shows "-".
    fn supports(&self, _step: Step) -> bool {
        true
    }

    fn create_queue(&self, queue: &QueueName) -> impl Future<Output = anyhow::Result<()>> + Send;

    fn delete_queue(&self, queue: &QueueName) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// A client for one task of `step` on `queue`, opened before the clock starts (a
    /// `SendBatch` client also fills the receive steps' queues, untimed).
    fn client(
        &self,
        queue: &QueueName,
        step: Step,
        plan: &Plan,
    ) -> impl Future<Output = anyhow::Result<Self::Client>> + Send;

    /// Starts a consumer on `queue` that reports every message it sees, for the latency step.
    fn watch(
        &self,
        queue: &QueueName,
        plan: &Plan,
    ) -> impl Future<Output = anyhow::Result<Watch>> + Send;
}

/// The operations a step times, on one task's client.
pub trait Client: Send + 'static {
    /// What one send carries, built before the clock starts.
    type Message: Send + 'static;

    /// The `i`-th message of a step (cycling through the plan's templates, a fresh id each).
    fn message(&self, i: u64) -> Self::Message;

    /// The id the latency watcher reports for `message`, when the backend carries one.
    fn message_id(_message: &Self::Message) -> Option<MessageId> {
        None
    }

    /// Sends one message (the `send` and `latency` steps).
    fn send(&mut self, message: Self::Message) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Sends a batch, failing unless all of it was taken.
    fn send_batch(
        &mut self,
        messages: Vec<Self::Message>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Takes up to `max` messages and acks what came; 0 when nothing came (after at most a
    /// short wait of the backend's own).
    fn receive_ack(&mut self, max: u64) -> impl Future<Output = anyhow::Result<u64>> + Send;

    /// Called after a `receive_ack` that found nothing: waits for a wakeup (or polls) instead
    /// of spinning.
    fn idle(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Releases the client, after the clock stopped.
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }
}

/// Where a latency watcher reports each message it sees: its id (when known) and when.
pub type SeenTx = mpsc::UnboundedSender<anyhow::Result<(Option<MessageId>, Instant)>>;
type SeenRx = mpsc::UnboundedReceiver<anyhow::Result<(Option<MessageId>, Instant)>>;

/// A consumer running for the latency step, stopped (and cleaned up) when the step ends.
pub struct Watch {
    seen: SeenRx,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Runs `consumer` (which reports through the sender it is given) until the step ends,
    /// then `cleanup` (closing its channel, say).
    pub fn spawn<C, F, D>(consumer: C, cleanup: D) -> Watch
    where
        C: FnOnce(SeenTx) -> F,
        F: Future<Output = ()> + Send + 'static,
        D: Future<Output = ()> + Send + 'static,
    {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let consumer = consumer(seen_tx);
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = consumer => {}
                _ = stopped => {}
            }
            cleanup.await;
        });
        Watch {
            seen,
            stop: Some(stop),
            task,
        }
    }

    /// When the consumer saw the message `id` (any message when the id is unknown), skipping
    /// reports of others; an error if it reports one, ends, or stays silent too long.
    pub(super) async fn seen(
        &mut self,
        id: Option<MessageId>,
        label: &str,
    ) -> anyhow::Result<Instant> {
        loop {
            let next = tokio::time::timeout(DELIVERY_LIMIT, self.seen.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!("{label}: message not delivered within {DELIVERY_LIMIT:?}")
                })?;
            match next {
                Some(Ok((got, at))) if got.is_none() || id.is_none() || got == id => return Ok(at),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.context(format!("{label} consumer"))),
                None => anyhow::bail!("{label}: the consumer ended"),
            }
        }
    }

    pub(super) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}
