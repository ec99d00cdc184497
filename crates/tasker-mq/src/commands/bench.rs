//! `tasker-mq bench`: throughput and send-to-receive latency of the chosen provider.
//!
//! Every step uses its own uniquely named queue (`bench_<run>_<step>`), deleted afterwards, so
//! runs never see each other's messages. The payload is the orchestrator's canonical message,
//! the JSON three-UUID `StepMessage` (about 159 bytes), encoded before timing starts.
//!
//! A provider may register a raw-client baseline ([`raw_baseline`]): the same steps done with
//! the backend's own client, no abstraction, run in the same process so the table can quote
//! the ratio on a noisy machine.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::Serialize;
use tasker_messaging::{
    ConsumerExt, ConsumerOptions, MessageId, MessagingConfig, MessagingService, OutgoingMessage,
    ProviderKind, QueueName, StepMessage,
};
use tokio::sync::{mpsc, Barrier};

use crate::provider::GlobalOpts;
use crate::table;

#[cfg(feature = "pgmq")]
mod raw_pgmq;
#[cfg(feature = "rabbitmq")]
mod raw_rabbitmq;

/// Lease taken by every receive: long enough that nothing is redelivered during a step.
const LEASE: Duration = Duration::from_secs(30);
/// A step that makes no progress for this long has lost messages: fail instead of hanging.
const STALL_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Messages per throughput step.
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Concurrent tasks per throughput step; the messages are split between them.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub tasks: u64,
    /// Messages per send_batch and per receive call.
    #[arg(long, value_name = "B", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_size: u64,
    /// Messages timed one by one in the latency step.
    #[arg(long, value_name = "N", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub latency_samples: u64,
    /// Steps to run, comma-separated. Default: all.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "STEP")]
    pub steps: Vec<Step>,
    /// With a raw-client baseline: split each step into this many rounds, alternating which
    /// of the two goes first, so load from elsewhere falls on both alike.
    #[arg(long, value_name = "R", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rounds: u64,
    /// Print the results as JSON on stdout (and no progress bars).
    #[arg(long)]
    pub json: bool,
}

/// One measured operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Step {
    /// send, one message per call.
    Send,
    /// send_batch of --batch-size messages.
    SendBatch,
    /// receive(--batch-size) + delete_messages of what came, on a pre-filled queue.
    ReceiveAck,
    /// The consumer stream (native push where the provider has one) on a pre-filled queue,
    /// acked with one delete_messages per ready chunk of at most --batch-size.
    ConsumeAck,
    /// send_batch + receive + delete_messages in a loop: each message's whole life.
    SendReceiveAck,
    /// one producer sends one message at a time, timed until the consumer stream yields it.
    Latency,
}

impl Step {
    const ALL: [Step; 6] = [
        Step::Send,
        Step::SendBatch,
        Step::ReceiveAck,
        Step::ConsumeAck,
        Step::SendReceiveAck,
        Step::Latency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Send => "send",
            Step::SendBatch => "send_batch",
            Step::ReceiveAck => "receive_ack",
            Step::ConsumeAck => "consume_ack",
            Step::SendReceiveAck => "send_receive_ack",
            Step::Latency => "latency",
        }
    }

    fn describe(self, batch: u64) -> String {
        match self {
            Step::Send => "send, one message per call".into(),
            Step::SendBatch => format!("send_batch({batch})"),
            Step::ReceiveAck => format!("receive({batch}) + delete_messages"),
            Step::ConsumeAck => format!("consume stream, delete_messages per chunk (<= {batch})"),
            Step::SendReceiveAck => {
                format!("send_batch({batch}) + receive({batch}) + delete_messages")
            }
            Step::Latency => "send -> consumer stream, one in flight".into(),
        }
    }

    /// What the p50/p99 columns time for this step.
    fn timed(self) -> &'static str {
        match self {
            Step::Send => "one send call",
            Step::SendBatch => "one send_batch call",
            Step::ReceiveAck => "one receive + delete_messages",
            Step::ConsumeAck => "one chunk: waiting for it + delete_messages",
            Step::SendReceiveAck => "one send_batch + receive + delete_messages",
            Step::Latency => "send until the consumer sees the message",
        }
    }
}

/// What every step runs with; shared with raw baselines so they do the same work.
pub struct Plan {
    pub messages: u64,
    pub tasks: u64,
    pub batch_size: u64,
    pub latency_samples: u64,
    /// Encoded `StepMessage`s (ids carried), cycled through by every step.
    pub templates: Arc<Vec<OutgoingMessage>>,
    /// Unique per run: queue names start with `bench_<run_id>_`.
    pub run_id: String,
}

impl Plan {
    /// Round `r` of `rounds`: the same plan with its share of the messages and samples.
    fn part(&self, rounds: u64, r: u64) -> Plan {
        Plan {
            messages: share(self.messages, rounds, r),
            tasks: self.tasks,
            batch_size: self.batch_size,
            latency_samples: share(self.latency_samples, rounds, r),
            templates: self.templates.clone(),
            run_id: self.run_id.clone(),
        }
    }

    fn message(&self, i: u64) -> OutgoingMessage {
        fresh(&self.templates, i)
    }

    pub fn payload_bytes(&self) -> usize {
        self.templates.first().map_or(0, |m| m.payload.len())
    }

    pub fn queue_for(&self, step: Step) -> anyhow::Result<QueueName> {
        let short = match step {
            Step::Send => "send",
            Step::SendBatch => "batch",
            Step::ReceiveAck => "recv",
            Step::ConsumeAck => "cons",
            Step::SendReceiveAck => "sra",
            Step::Latency => "lat",
        };
        Ok(QueueName::new(format!("bench_{}_{short}", self.run_id))?)
    }
}

/// A template with a fresh message id: what a producer would send.
fn fresh(templates: &[OutgoingMessage], i: u64) -> OutgoingMessage {
    let t = &templates[(i % templates.len() as u64) as usize];
    OutgoingMessage {
        payload: t.payload.clone(),
        message_id: MessageId::new(),
        correlation_id: t.correlation_id,
        delay: Duration::ZERO,
    }
}

/// The outcome of one step: messages moved, wall time, and a histogram of call times (ns).
pub struct Measurement {
    pub messages: u64,
    pub elapsed: Duration,
    pub histogram: Histogram<u64>,
}

impl Measurement {
    /// Adds the rounds of a step together.
    fn absorb(total: Option<Measurement>, part: Measurement) -> anyhow::Result<Measurement> {
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
}

/// A backend's own client doing a step with no abstraction, for the ratio column.
#[async_trait]
pub trait RawBaseline: Send + Sync {
    /// Names the client, e.g. "pgmq crate 0.33".
    fn client(&self) -> String;
    /// Runs `step` as `plan` says, on its own queues (cleaned up after); `None` when the raw
    /// client has no equivalent of the step.
    async fn run(&self, step: Step, plan: &Plan) -> anyhow::Result<Option<Measurement>>;
}

/// The raw baseline registered for the configured provider, if any.
fn raw_baseline(config: &MessagingConfig) -> anyhow::Result<Option<Box<dyn RawBaseline>>> {
    match config.provider {
        // Nothing lies beneath the in-memory provider to compare it with.
        ProviderKind::InMemory => Ok(None),
        #[cfg(feature = "pgmq")]
        ProviderKind::Pgmq => Ok(Some(Box::new(raw_pgmq::RawPgmq::from_config(config)?))),
        #[cfg(feature = "rabbitmq")]
        ProviderKind::Rabbitmq => raw_rabbitmq::baseline(config).map(Some),
        // Providers register their raw client here as they land.
        _ => Ok(None),
    }
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub provider: ProviderKind,
    pub messages: u64,
    pub tasks: u64,
    pub batch_size: u64,
    pub latency_samples: u64,
    pub payload_bytes: usize,
    pub steps: Vec<StepReport>,
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub step: Step,
    pub description: String,
    pub messages: u64,
    pub seconds: f64,
    pub msg_per_sec: f64,
    /// What p50/p99/max time.
    pub timed: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub raw: Option<RawReport>,
}

#[derive(Debug, Serialize)]
pub struct RawReport {
    pub client: String,
    pub msg_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Provider throughput over raw throughput.
    pub throughput_ratio: f64,
}

pub async fn run(global: &GlobalOpts, args: BenchArgs) -> anyhow::Result<()> {
    let (config, service) = global.connect().await?;
    // The queue of the step in progress, deleted on Ctrl-C so a server keeps no leftovers.
    let current = Arc::new(Mutex::new(None));
    tokio::select! {
        result = run_steps(&config, &service, args, &current) => result,
        _ = tokio::signal::ctrl_c() => {
            let queue = current.lock().ok().and_then(|mut q| q.take());
            if let Some(queue) = queue {
                // Best effort: the tasks of the interrupted step may still hold it.
                let _ = service.delete_queue(&queue).await;
            }
            anyhow::bail!("interrupted; the bench queue was deleted")
        }
    }
}

async fn run_steps(
    config: &MessagingConfig,
    service: &Arc<dyn MessagingService>,
    args: BenchArgs,
    current: &Mutex<Option<QueueName>>,
) -> anyhow::Result<()> {
    let baseline = raw_baseline(config)?;
    let steps = if args.steps.is_empty() {
        Step::ALL.to_vec()
    } else {
        args.steps.clone()
    };
    let plan = Plan {
        messages: args.messages,
        tasks: args.tasks,
        batch_size: args
            .batch_size
            .min(service.capabilities().max_batch_size as u64)
            .max(1),
        latency_samples: args.latency_samples,
        templates: Arc::new(templates(args.messages.clamp(1, 4096))?),
        run_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
    };
    let show_progress = !args.json && std::io::stderr().is_terminal();
    let mut report = BenchReport {
        provider: service.provider(),
        messages: plan.messages,
        tasks: plan.tasks,
        batch_size: plan.batch_size,
        latency_samples: plan.latency_samples,
        payload_bytes: plan.payload_bytes(),
        steps: Vec::new(),
    };
    for step in steps {
        let total = match step {
            Step::Latency => plan.latency_samples,
            _ => plan.messages,
        };
        let bar = crate::progress::bar(show_progress, total, step.name());
        // Without a baseline there is nothing to alternate with: one round.
        let rounds = match &baseline {
            Some(_) => args.rounds.min(total).max(1),
            None => 1,
        };
        let (mut measured, mut raw_measured) = (None, None);
        for r in 0..rounds {
            let part = plan.part(rounds, r);
            let raw_first = r % 2 == 1;
            for raw_turn in [raw_first, !raw_first] {
                match (&baseline, raw_turn) {
                    (Some(b), true) => {
                        if let Some(m) = b.run(step, &part).await.with_context(|| {
                            format!("raw baseline ({}) step {}", b.client(), step.name())
                        })? {
                            raw_measured = Some(Measurement::absorb(raw_measured, m)?);
                        }
                    }
                    (None, true) => {}
                    (_, false) => {
                        let m = run_step(service, step, &part, &bar, current).await;
                        let m = m.with_context(|| format!("bench step {}", step.name()));
                        let m = match m {
                            Ok(m) => m,
                            Err(e) => {
                                bar.finish_and_clear();
                                return Err(e);
                            }
                        };
                        measured = Some(Measurement::absorb(measured, m)?);
                    }
                }
            }
        }
        bar.finish_and_clear();
        let measured = measured.context("a bench step ran no round")?;
        let raw = raw_measured.map(|m| RawReport {
            client: baseline.as_ref().map(|b| b.client()).unwrap_or_default(),
            msg_per_sec: rate(&m),
            p50_ms: quantile_ms(&m.histogram, 0.5),
            p99_ms: quantile_ms(&m.histogram, 0.99),
            throughput_ratio: rate(&measured) / rate(&m).max(f64::MIN_POSITIVE),
        });
        report.steps.push(StepReport {
            step,
            description: step.describe(plan.batch_size),
            messages: measured.messages,
            seconds: measured.elapsed.as_secs_f64(),
            msg_per_sec: rate(&measured),
            timed: step.timed(),
            p50_ms: quantile_ms(&measured.histogram, 0.5),
            p99_ms: quantile_ms(&measured.histogram, 0.99),
            max_ms: measured.histogram.max() as f64 / 1e6,
            raw,
        });
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out!("{}", render(&report))?;
    }
    Ok(())
}

/// Runs one step on its own queue and deletes the queue, whatever the outcome.
async fn run_step(
    service: &Arc<dyn MessagingService>,
    step: Step,
    plan: &Plan,
    bar: &ProgressBar,
    current: &Mutex<Option<QueueName>>,
) -> anyhow::Result<Measurement> {
    let queue = plan.queue_for(step)?;
    set_current(current, Some(queue.clone()));
    service
        .create_queue(&queue)
        .await
        .with_context(|| format!("creating {queue}"))?;
    let result = match step {
        Step::Send => bench_send(service, &queue, plan, bar).await,
        Step::SendBatch => bench_send_batch(service, &queue, plan, bar).await,
        Step::ReceiveAck => bench_receive_ack(service, &queue, plan, bar).await,
        Step::ConsumeAck => bench_consume_ack(service, &queue, plan, bar).await,
        Step::SendReceiveAck => bench_send_receive_ack(service, &queue, plan, bar).await,
        Step::Latency => bench_latency(service, &queue, plan, bar).await,
    };
    let cleanup = service
        .delete_queue(&queue)
        .await
        .with_context(|| format!("deleting {queue}"));
    set_current(current, None);
    let measured = result?;
    cleanup?;
    Ok(measured)
}

fn set_current(current: &Mutex<Option<QueueName>>, queue: Option<QueueName>) {
    if let Ok(mut slot) = current.lock() {
        *slot = queue;
    }
}

fn templates(n: u64) -> anyhow::Result<Vec<OutgoingMessage>> {
    (0..n)
        .map(|_| Ok(OutgoingMessage::json(&StepMessage::random())?))
        .collect()
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 10 minutes at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("static histogram bounds are valid")
}

fn record(h: &mut Histogram<u64>, since: Instant) {
    h.saturating_record(since.elapsed().as_nanos().min(u64::MAX as u128) as u64);
}

/// The bookkeeping of one task draining a shared target, shared with the raw baselines: the
/// total acked by all tasks, this task's share, its histogram, and the stall check (a round
/// without messages for [`STALL_LIMIT`] is an error, not a hang).
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

    /// Acked by all tasks so far.
    fn total(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    fn unfinished(&self) -> bool {
        self.total() < self.target
    }

    /// A round that found nothing: fine until nothing has come for [`STALL_LIMIT`].
    fn idle(&self, who: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.last_progress.elapsed() < STALL_LIMIT,
            "{who}: nothing for {STALL_LIMIT:?} with {} of {} acked",
            self.total(),
            self.target
        );
        Ok(())
    }

    /// `k` messages acked by a round that started at `t`.
    fn acked(&mut self, k: u64, h: &mut Histogram<u64>, t: Instant) {
        record(h, t);
        self.last_progress = Instant::now();
        self.mine += k;
        self.acked.fetch_add(k, Ordering::Relaxed);
    }
}

/// The bookkeeping of a latency step, shared with the raw baselines: a few untimed round
/// trips first (so the consumer is running when timing starts), then `latency_samples` timed
/// ones.
pub struct LatencyTimer {
    warmup: u64,
    samples: u64,
    histogram: Histogram<u64>,
    timed_from: Instant,
}

impl LatencyTimer {
    pub fn new(plan: &Plan) -> Self {
        LatencyTimer {
            warmup: (plan.latency_samples / 10).clamp(1, 100),
            samples: plan.latency_samples,
            histogram: new_histogram(),
            timed_from: Instant::now(),
        }
    }

    /// Round trips to make, warm-up included.
    pub fn round_trips(&self) -> u64 {
        self.warmup + self.samples
    }

    /// Called before round trip `i`: the step's clock starts with the first timed one.
    pub fn begin(&mut self, i: u64) {
        if i == self.warmup {
            self.timed_from = Instant::now();
        }
    }

    /// Records round trip `i` (sent at `start`, seen at `seen`); true when it was timed.
    pub fn record(&mut self, i: u64, start: Instant, seen: Instant) -> bool {
        if i < self.warmup {
            return false;
        }
        let took = seen.saturating_duration_since(start);
        self.histogram
            .saturating_record(took.as_nanos().min(u64::MAX as u128) as u64);
        true
    }

    pub fn finish(self) -> Measurement {
        Measurement {
            messages: self.samples,
            elapsed: self.timed_from.elapsed(),
            histogram: self.histogram,
        }
    }
}

/// When the consumer reporting on `seen` saw the message `id`, skipping reports of others;
/// an error if it reports one, ends, or stays silent for 10 s.
pub async fn seen_within<T: PartialEq + std::fmt::Display>(
    seen: &mut mpsc::UnboundedReceiver<anyhow::Result<(T, Instant)>>,
    id: &T,
    consumer: &str,
) -> anyhow::Result<Instant> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .map_err(|_| anyhow::anyhow!("{consumer}: message {id} not delivered within 10 s"))?;
        match next {
            Some(Ok((got, at))) if got == *id => return Ok(at),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.context(consumer.to_owned())),
            None => anyhow::bail!("{consumer} ended"),
        }
    }
}

fn rate(m: &Measurement) -> f64 {
    m.messages as f64 / m.elapsed.as_secs_f64().max(1e-9)
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e6
}

/// The share of `total` that task `i` of `k` handles.
fn share(total: u64, k: u64, i: u64) -> u64 {
    total / k + u64::from(i < total % k)
}

/// Starts `plan.tasks` tasks together and times them from the first start to the last
/// finish, as the tasks themselves saw it (the spawning thread may be descheduled while they
/// run). Each returns (messages handled, call-time histogram).
async fn parallel<F, Fut>(plan: &Plan, task: F) -> anyhow::Result<Measurement>
where
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = anyhow::Result<(u64, Histogram<u64>)>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(plan.tasks as usize));
    let mut handles = Vec::with_capacity(plan.tasks as usize);
    for i in 0..plan.tasks {
        let fut = task(i, share(plan.messages, plan.tasks, i));
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            let result = fut.await;
            (start, Instant::now(), result)
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

async fn bench_send(
    service: &Arc<dyn MessagingService>,
    queue: &QueueName,
    plan: &Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    parallel(plan, |task, n| {
        let (service, queue, bar) = (service.clone(), queue.clone(), bar.clone());
        let templates = plan.templates.clone();
        async move {
            let mut h = new_histogram();
            for i in 0..n {
                let message = fresh(&templates, task * n + i);
                let t = Instant::now();
                service.send(&queue, message).await?;
                record(&mut h, t);
                if i % 100 == 99 {
                    bar.inc(100);
                }
            }
            bar.inc(n % 100);
            Ok((n, h))
        }
    })
    .await
}

async fn bench_send_batch(
    service: &Arc<dyn MessagingService>,
    queue: &QueueName,
    plan: &Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    let batch = plan.batch_size;
    parallel(plan, |task, n| {
        let (service, queue, bar) = (service.clone(), queue.clone(), bar.clone());
        let templates = plan.templates.clone();
        async move {
            let mut h = new_histogram();
            let mut sent = 0;
            while sent < n {
                let k = batch.min(n - sent);
                let messages = (sent..sent + k)
                    .map(|i| fresh(&templates, task * n + i))
                    .collect();
                let t = Instant::now();
                let ids = service.send_batch(&queue, messages).await?;
                record(&mut h, t);
                anyhow::ensure!(
                    ids.len() as u64 == k,
                    "send_batch returned {} ids for {k}",
                    ids.len()
                );
                sent += k;
                bar.inc(k);
            }
            Ok((n, h))
        }
    })
    .await
}

/// Fills `queue` with `n` messages (untimed).
async fn fill(
    service: &Arc<dyn MessagingService>,
    queue: &QueueName,
    plan: &Plan,
    n: u64,
) -> anyhow::Result<()> {
    let mut sent = 0;
    while sent < n {
        let k = plan.batch_size.min(n - sent);
        let messages = (sent..sent + k).map(|i| plan.message(i)).collect();
        service
            .send_batch(queue, messages)
            .await
            .context("filling the queue")?;
        sent += k;
    }
    Ok(())
}

/// Receives and acks until `acked` reaches `target` (shared by all tasks). An empty receive
/// while others still hold leases waits for the provider's wakeup instead of spinning.
async fn drain(
    service: &Arc<dyn MessagingService>,
    queue: &QueueName,
    batch: u64,
    acked: &AtomicU64,
    target: u64,
    h: &mut Histogram<u64>,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let mut progress = DrainProgress::new(acked, target);
    while progress.unfinished() {
        let t = Instant::now();
        let got = service.receive(queue, batch as usize, LEASE).await?;
        if got.is_empty() {
            progress.idle("receive")?;
            service
                .wait_for_messages(queue, Duration::from_millis(5))
                .await;
            continue;
        }
        ack_all(service, queue, &got).await?;
        progress.acked(got.len() as u64, h, t);
        bar.inc(got.len() as u64);
    }
    Ok(progress.mine)
}

async fn ack_all(
    service: &Arc<dyn MessagingService>,
    queue: &QueueName,
    got: &[tasker_messaging::ReceivedMessage],
) -> anyhow::Result<()> {
    let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
    let outcome = service.delete_messages(queue, &receipts).await?;
    if let Some((receipt, e)) = outcome.rejected.into_iter().next() {
        anyhow::bail!("ack of receipt {receipt} refused: {e}");
    }
    Ok(())
}

async fn bench_receive_ack(
    service: &Arc<dyn MessagingService>,
    queue: &QueueName,
    plan: &Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    fill(service, queue, plan, plan.messages).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let (target, batch) = (plan.messages, plan.batch_size);
    let m = parallel(plan, |_, _| {
        let (service, queue, bar, acked) =
            (service.clone(), queue.clone(), bar.clone(), acked.clone());
        async move {
            let mut h = new_histogram();
            let mine = drain(&service, &queue, batch, &acked, target, &mut h, &bar).await?;
            Ok((mine, h))
        }
    })
    .await?;
    anyhow::ensure!(
        m.messages == target,
        "acked {} of {target} messages",
        m.messages
    );
    Ok(m)
}

async fn bench_consume_ack(
    service: &Arc<dyn MessagingService>,
    queue: &QueueName,
    plan: &Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    fill(service, queue, plan, plan.messages).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let (target, batch) = (plan.messages, plan.batch_size as usize);
    let m = parallel(plan, |_, _| {
        let (service, queue, bar, acked) =
            (service.clone(), queue.clone(), bar.clone(), acked.clone());
        async move {
            let options = ConsumerOptions {
                batch_size: batch,
                visibility_timeout: LEASE,
                ..ConsumerOptions::default()
            };
            // Whatever the stream has ready, up to a batch: acks batch themselves under load
            // and never wait for a batch to fill.
            let mut chunks = service.consume(&queue, options).ready_chunks(batch);
            let mut h = new_histogram();
            let mut progress = DrainProgress::new(&acked, target);
            while progress.unfinished() {
                let t = Instant::now();
                // Bounded, so a task whose share went to another consumer notices the end.
                let chunk =
                    match tokio::time::timeout(Duration::from_millis(100), chunks.next()).await {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => anyhow::bail!("the consumer stream ended"),
                        Err(_) => {
                            progress.idle("consume")?;
                            continue;
                        }
                    };
                let mut got = Vec::with_capacity(chunk.len());
                for item in chunk {
                    match item {
                        Ok(message) => got.push(message),
                        Err(e) if e.is_retryable() => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                if got.is_empty() {
                    continue;
                }
                ack_all(&service, &queue, &got).await?;
                progress.acked(got.len() as u64, &mut h, t);
                bar.inc(got.len() as u64);
            }
            Ok((progress.mine, h))
        }
    })
    .await?;
    anyhow::ensure!(
        m.messages == target,
        "acked {} of {target} messages",
        m.messages
    );
    Ok(m)
}

async fn bench_send_receive_ack(
    service: &Arc<dyn MessagingService>,
    queue: &QueueName,
    plan: &Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    let acked = Arc::new(AtomicU64::new(0));
    let (target, batch) = (plan.messages, plan.batch_size);
    let m = parallel(plan, |task, n| {
        let (service, queue, bar, acked) =
            (service.clone(), queue.clone(), bar.clone(), acked.clone());
        let templates = plan.templates.clone();
        async move {
            let mut h = new_histogram();
            let mut sent = 0;
            let mut mine = 0;
            while sent < n {
                let k = batch.min(n - sent);
                let messages = (sent..sent + k)
                    .map(|i| fresh(&templates, task * n + i))
                    .collect();
                let t = Instant::now();
                service.send_batch(&queue, messages).await?;
                let got = service.receive(&queue, batch as usize, LEASE).await?;
                if !got.is_empty() {
                    ack_all(&service, &queue, &got).await?;
                }
                record(&mut h, t);
                sent += k;
                let r = got.len() as u64;
                mine += r;
                acked.fetch_add(r, Ordering::Relaxed);
                bar.inc(r);
            }
            // With several tasks, a receive may have found fewer than it sent: take the rest.
            mine += drain(&service, &queue, batch, &acked, target, &mut h, &bar).await?;
            Ok((mine, h))
        }
    })
    .await?;
    anyhow::ensure!(
        m.messages == target,
        "acked {} of {target} messages",
        m.messages
    );
    Ok(m)
}

async fn bench_latency(
    service: &Arc<dyn MessagingService>,
    queue: &QueueName,
    plan: &Plan,
    bar: &ProgressBar,
) -> anyhow::Result<Measurement> {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<anyhow::Result<(MessageId, Instant)>>();
    let mut stream = service.consume(
        queue,
        ConsumerOptions {
            batch_size: plan.batch_size as usize,
            visibility_timeout: LEASE,
            ..ConsumerOptions::default()
        },
    );
    let consumer = {
        let (service, queue) = (service.clone(), queue.clone());
        tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let seen = Instant::now();
                match item {
                    Ok(message) => {
                        let _ = seen_tx.send(Ok((message.metadata.message_id, seen)));
                        // Acked after reporting: the ack is not part of the latency.
                        if let Err(e) = service.delete_message(&queue, message.receipt()).await {
                            let _ = seen_tx.send(Err(e.into()));
                        }
                    }
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => {
                        let _ = seen_tx.send(Err(e.into()));
                        break;
                    }
                }
            }
        })
    };
    let result = async {
        let mut timer = LatencyTimer::new(plan);
        for i in 0..timer.round_trips() {
            timer.begin(i);
            let message = plan.message(i);
            let id = message.message_id;
            let start = Instant::now();
            service.send(queue, message).await?;
            let seen = seen_within(&mut seen_rx, &id, "consumer stream").await?;
            if timer.record(i, start, seen) {
                bar.inc(1);
            }
        }
        Ok(timer.finish())
    }
    .await;
    consumer.abort();
    let _ = consumer.await;
    result
}

fn render(report: &BenchReport) -> String {
    let mut out = format!(
        "provider {}  messages {}  tasks {}  batch {}  payload {} bytes  latency samples {}\n\n",
        report.provider,
        report.messages,
        report.tasks,
        report.batch_size,
        report.payload_bytes,
        report.latency_samples
    );
    let has_raw = report.steps.iter().any(|s| s.raw.is_some());
    let mut header = vec!["step", "what", "msg/s", "p50", "p99", "max", "p50/p99 time"];
    if has_raw {
        header.extend(["raw msg/s", "raw p50", "ratio"]);
    }
    let rows: Vec<Vec<String>> = report
        .steps
        .iter()
        .map(|s| {
            let mut row = vec![
                s.step.name().to_owned(),
                s.description.clone(),
                thousands(s.msg_per_sec),
                duration_ms(s.p50_ms),
                duration_ms(s.p99_ms),
                duration_ms(s.max_ms),
                s.timed.to_owned(),
            ];
            if has_raw {
                match &s.raw {
                    Some(r) => row.extend([
                        thousands(r.msg_per_sec),
                        duration_ms(r.p50_ms),
                        format!("{:.2}x", r.throughput_ratio),
                    ]),
                    None => row.extend(["-".into(), "-".into(), "-".into()]),
                }
            }
            row
        })
        .collect();
    out.push_str(&table::render(&header, &rows));
    out
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds, shown in µs below 1 ms so fast providers do not print zeros.
fn duration_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.1} µs", ms * 1000.0)
    } else {
        format!("{ms:.2} ms")
    }
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

    #[test]
    fn numbers_format_for_the_table() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(duration_ms(0.0123), "12.3 µs");
        assert_eq!(duration_ms(2.5), "2.50 ms");
    }
}
