//! The one timed loop of `tasker-mq bench`, shared by the provider and every raw baseline.
//!
//! A [`Target`] (the provider through `MessagingService`, or a backend's own client) only
//! says how to do each operation: send one, send a batch, take up to N messages and ack them,
//! watch a queue for the latency step. Everything else lives here once: queues made and
//! removed, tasks started together behind a barrier, what is timed and what is not (messages
//! are built and clients opened before the clock starts, clients closed after it stops), the
//! shared drain target and its stall check, the latency warm-up, and the progress bar.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tasker_messaging::QueueName;
use tokio::sync::Barrier;

use super::target::{Client, Target};
use super::{Plan, Step};

/// A step that makes no progress for this long has lost messages: fail instead of hanging.
const STALL_LIMIT: Duration = Duration::from_secs(30);

/// The outcome of one step: messages moved, wall time, and a histogram of call times (ns).
pub struct Measurement {
    pub messages: u64,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
}

impl Measurement {
    /// Adds the rounds of a step together.
    pub fn absorb(total: Option<Measurement>, part: Measurement) -> anyhow::Result<Measurement> {
        let Some(mut total) = total else {
            return Ok(part);
        };
        total.messages += part.messages;
        total.elapsed += part.elapsed;
        total
            .histogram
            .add(part.histogram)
            .context("merging histograms")?;
        Ok(total)
    }

    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1e6
    }
}

/// A target behind `dyn`, so the command can pick the raw baseline at run time while the
/// loops stay monomorphic (no boxing per operation).
#[async_trait]
pub trait Bench: Send + Sync {
    fn label(&self) -> String;
    /// Runs `step` on its own queue (removed afterwards, whatever the outcome); `None` when the
    /// target has no equivalent of the step.
    async fn run(
        &self,
        step: Step,
        plan: &Plan,
        bar: &ProgressBar,
    ) -> anyhow::Result<Option<Measurement>>;
}

#[async_trait]
impl<T: Target> Bench for T {
    fn label(&self) -> String {
        Target::label(self)
    }

    async fn run(
        &self,
        step: Step,
        plan: &Plan,
        bar: &ProgressBar,
    ) -> anyhow::Result<Option<Measurement>> {
        if !self.supports(step) {
            return Ok(None);
        }
        let queue = QueueName::new(format!("{}{}", plan.queue_for(step)?, T::QUEUE_SUFFIX))?;
        self.create_queue(&queue)
            .await
            .with_context(|| format!("creating {queue}"))?;
        let result = match step {
            Step::Send => send(self, &queue, plan, bar).await,
            Step::SendBatch => send_batch(self, &queue, plan, bar).await,
            Step::ReceiveAck | Step::ConsumeAck => receive_ack(self, step, &queue, plan, bar).await,
            Step::SendReceiveAck => send_receive_ack(self, &queue, plan, bar).await,
            Step::Latency => latency(self, &queue, plan, bar).await,
        };
        let cleanup = self
            .delete_queue(&queue)
            .await
            .with_context(|| format!("deleting {queue}"));
        let measured = result?;
        cleanup?;
        Ok(Some(measured))
    }
}

/// Opens one client per task, starts the tasks together and times them from the first start
/// to the last finish, as the tasks themselves saw it (the spawning thread may be descheduled
/// while they run). Each gets (its client, its index, its share of the messages) and returns
/// (messages handled, call-time histogram, the client to close after the clock stopped).
async fn timed<T, F, Fut>(
    target: &T,
    queue: &QueueName,
    step: Step,
    plan: &Plan,
    task: F,
) -> anyhow::Result<Measurement>
where
    T: Target,
    F: Fn(T::Client, u64, u64) -> Fut,
    Fut: Future<Output = anyhow::Result<(u64, Histogram<u64>, T::Client)>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(plan.tasks as usize));
    let mut handles = Vec::with_capacity(plan.tasks as usize);
    for i in 0..plan.tasks {
        let client = target.client(queue, step, plan).await?;
        let fut = task(client, i, share(plan.messages, plan.tasks, i));
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            let result = fut.await;
            let end = Instant::now();
            let result = match result {
                Ok((n, h, client)) => {
                    client.close().await;
                    Ok((n, h))
                }
                Err(e) => Err(e),
            };
            (start, end, result)
        }));
    }
    let mut histogram = new_histogram();
    let mut messages = 0;
    let mut first_error = None;
    let mut span: Option<(Instant, Instant)> = None;
    for handle in handles {
        let (start, end, result) = handle.await.context("bench task panicked")?;
        span = Some(match span {
            None => (start, end),
            Some((s, e)) => (s.min(start), e.max(end)),
        });
        match result {
            Ok((n, h)) => {
                messages += n;
                histogram.add(h).context("merging histograms")?;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let elapsed = span.map_or(Duration::ZERO, |(s, e)| e - s);
    Ok(Measurement {
        messages,
        elapsed,
        histogram,
    })
}

async fn send<T: Target>(
    target: &T,
    queue: &QueueName,
    plan: &Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    timed(target, queue, Step::Send, plan, |mut client, task, n| {
        let bar = bar.clone();
        async move {
            let mut h = new_histogram();
            for i in 0..n {
                let message = client.message(task * n + i);
                let t = Instant::now();
                client.send(message).await?;
                record(&mut h, t);
                if i % 100 == 99 {
                    bar.inc(100);
                }
            }
            bar.inc(n % 100);
            Ok((n, h, client))
        }
    })
    .await
}

async fn send_batch<T: Target>(
    target: &T,
    queue: &QueueName,
    plan: &Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    let batch = plan.batch_size;
    timed(
        target,
        queue,
        Step::SendBatch,
        plan,
        |mut client, task, n| {
            let bar = bar.clone();
            async move {
                let mut h = new_histogram();
                let mut sent = 0;
                while sent < n {
                    let k = batch.min(n - sent);
                    let messages = (sent..sent + k)
                        .map(|i| client.message(task * n + i))
                        .collect();
                    let t = Instant::now();
                    client.send_batch(messages).await?;
                    record(&mut h, t);
                    sent += k;
                    bar.inc(k);
                }
                Ok((n, h, client))
            }
        },
    )
    .await
}

/// `receive_ack` and `consume_ack`: the target's client for the step decides how it takes
/// messages (pull, stream, push consumer); the queue is filled first, untimed.
async fn receive_ack<T: Target>(
    target: &T,
    step: Step,
    queue: &QueueName,
    plan: &Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    fill(target, queue, plan).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let (total, batch) = (plan.messages, plan.batch_size);
    let m = timed(target, queue, step, plan, |mut client, _, _| {
        let (bar, acked) = (bar.clone(), acked.clone());
        async move {
            let mut h = new_histogram();
            let mut progress = DrainProgress::new(&acked, total);
            drain(&mut client, batch, &mut progress, &mut h, &bar).await?;
            Ok((progress.mine, h, client))
        }
    })
    .await?;
    anyhow::ensure!(
        m.messages == total,
        "acked {} of {total} messages",
        m.messages
    );
    Ok(m)
}

async fn send_receive_ack<T: Target>(
    target: &T,
    queue: &QueueName,
    plan: &Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    let acked = Arc::new(AtomicU64::new(0));
    let (total, batch) = (plan.messages, plan.batch_size);
    let m = timed(
        target,
        queue,
        Step::SendReceiveAck,
        plan,
        |mut client, task, n| {
            let (bar, acked) = (bar.clone(), acked.clone());
            async move {
                let mut h = new_histogram();
                let mut progress = DrainProgress::new(&acked, total);
                let mut sent = 0;
                while sent < n {
                    let k = batch.min(n - sent);
                    let messages = (sent..sent + k)
                        .map(|i| client.message(task * n + i))
                        .collect();
                    let t = Instant::now();
                    client.send_batch(messages).await?;
                    let got = client.receive_ack(k).await?;
                    record(&mut h, t);
                    sent += k;
                    progress.acked(got);
                    bar.inc(got);
                }
                // With several tasks, a receive may have found fewer than it sent: take the rest.
                drain(&mut client, batch, &mut progress, &mut h, &bar).await?;
                Ok((progress.mine, h, client))
            }
        },
    )
    .await?;
    anyhow::ensure!(
        m.messages == total,
        "acked {} of {total} messages",
        m.messages
    );
    Ok(m)
}

/// One producer sends one message at a time, each timed until the watcher sees it; a few
/// untimed round trips first, so the consumer is running when timing starts.
async fn latency<T: Target>(
    target: &T,
    queue: &QueueName,
    plan: &Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    let label = Target::label(target);
    let mut watch = target.watch(queue, plan).await?;
    let mut client = match target.client(queue, Step::Latency, plan).await {
        Ok(client) => client,
        Err(e) => {
            watch.stop().await;
            return Err(e);
        }
    };
    let warmup = (plan.latency_samples / 10).clamp(1, 100);
    let result = async {
        let mut h = new_histogram();
        let mut timed_from = Instant::now();
        for i in 0..warmup + plan.latency_samples {
            if i == warmup {
                timed_from = Instant::now();
            }
            let message = client.message(i);
            let id = T::Client::message_id(&message);
            let start = Instant::now();
            client.send(message).await?;
            let seen = watch.seen(id, &label).await?;
            if i >= warmup {
                let took = seen.saturating_duration_since(start);
                h.saturating_record(took.as_nanos().min(u64::MAX as u128) as u64);
                bar.inc(1);
            }
        }
        Ok(Measurement {
            messages: plan.latency_samples,
            elapsed: timed_from.elapsed(),
            histogram: h,
        })
    }
    .await;
    watch.stop().await;
    client.close().await;
    result
}

/// Fills `queue` with the step's messages through a `SendBatch` client (untimed).
async fn fill<T: Target>(target: &T, queue: &QueueName, plan: &Plan) -> anyhow::Result<()> {
    let mut client = target.client(queue, Step::SendBatch, plan).await?;
    let mut sent = 0;
    while sent < plan.messages {
        let k = plan.batch_size.min(plan.messages - sent);
        let messages = (sent..sent + k).map(|i| client.message(i)).collect();
        client
            .send_batch(messages)
            .await
            .context("filling the queue")?;
        sent += k;
    }
    client.close().await;
    Ok(())
}

/// Takes and acks until every task together reached the target. An empty round waits through
/// the client's `idle` instead of spinning, and fails after [`STALL_LIMIT`] without progress.
async fn drain<C: Client>(
    client: &mut C,
    batch: u64,
    progress: &mut DrainProgress<'_>,
    h: &mut Histogram<u64>,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    while progress.left() > 0 {
        let t = Instant::now();
        let got = client.receive_ack(batch.min(progress.left())).await?;
        if got == 0 {
            progress.idle()?;
            client.idle().await;
            continue;
        }
        record(h, t);
        progress.acked(got);
        bar.inc(got);
    }
    Ok(())
}

/// One task's share of a drain target that all tasks count towards together.
struct DrainProgress<'a> {
    acked: &'a AtomicU64,
    target: u64,
    mine: u64,
    last_progress: Instant,
}

impl<'a> DrainProgress<'a> {
    fn new(acked: &'a AtomicU64, target: u64) -> Self {
        DrainProgress {
            acked,
            target,
            mine: 0,
            last_progress: Instant::now(),
        }
    }

    /// Messages no task has acked yet.
    fn left(&self) -> u64 {
        self.target
            .saturating_sub(self.acked.load(Ordering::Relaxed))
    }

    /// A round that found nothing: fine until nothing has come for [`STALL_LIMIT`].
    fn idle(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.last_progress.elapsed() < STALL_LIMIT,
            "nothing received for {STALL_LIMIT:?} with {} of {} acked",
            self.target - self.left(),
            self.target
        );
        Ok(())
    }

    /// `k` messages acked by a round (a send + receive round counts as progress even when its
    /// receive came back empty).
    fn acked(&mut self, k: u64) {
        self.last_progress = Instant::now();
        self.mine += k;
        self.acked.fetch_add(k, Ordering::Relaxed);
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 10 minutes at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static histogram bounds are valid")
}

fn record(h: &mut Histogram<u64>, since: Instant) {
    h.saturating_record(since.elapsed().as_nanos().min(u64::MAX as u128) as u64);
}

/// The share of `total` that task `i` of `k` handles.
pub fn share(total: u64, k: u64, i: u64) -> u64 {
    total / k + u64::from(i < total % k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        for (total, k) in [(20_000, 1), (20_000, 3), (7, 4), (1, 8)] {
            assert_eq!((0..k).map(|i| share(total, k, i)).sum::<u64>(), total);
        }
    }
}
