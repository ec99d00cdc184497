//! `tasker-mq bench`: throughput and send-to-receive latency of the chosen provider.
//!
//! Every step uses its own uniquely named queue (`bench_<run>_<step>`), deleted afterwards, so
//! runs never see each other's messages. The payload is the orchestrator's canonical message,
//! the JSON three-UUID `StepMessage` (about 159 bytes), encoded before timing starts.
//!
//! The timed loop exists once, in `bench/timed.rs`: every step of the provider
//! (`bench/service.rs`) and of every raw baseline runs through it, and a backend only says how
//! to do each operation. A raw baseline is the same steps done with the backend's own client,
//! no abstraction, in the same process, rounds alternating with the provider, so the table can
//! quote the ratio on a noisy machine.
//!
//! # Adding a provider's raw baseline
//!
//! 1. Add `bench/raw_<provider>.rs` (behind the provider's cargo feature, with the raw client
//!    as an optional dependency of that feature) holding two types:
//!    * a target implementing [`target::Target`]: its `label` (client and version, shown in
//!      the table), `create_queue` / `delete_queue` (queues of the same kind the provider
//!      makes; names come with the suffix `_raw`), `client` (one task's connection, channel or
//!      handle for a step, opened before the clock starts; a `SendBatch` client also fills the
//!      receive steps' queues) and `watch` (a consumer reporting each message it sees, for the
//!      latency step, started with [`target::Watch::spawn`]);
//!    * a client implementing [`target::Client`]: `message(i)` (the plan's templates as that
//!      client sends them, built untimed), `send`, `send_batch`, `receive_ack(max)` (take up
//!      to `max` and ack them the fastest way the raw client can, returning how many; 0 after
//!      a short wait when none came), and optionally `idle` (how its users wait on an empty
//!      queue), `close` and `message_id`.
//!
//!    Do what the client's users would do where it has no equivalent of a step (say so in
//!    the file's docs), or return `false` from `supports(step)` to show "-".
//! 2. Register it in [`raw_baseline`] below, built from the provider's connection settings;
//!    never print its URL unredacted.
//! 3. Run `tasker-mq bench --provider <name>` and quote the same-run ratios in
//!    docs/benchmarks.md.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use serde::Serialize;
use tasker_messaging::{
    MessageId, MessagingConfig, MessagingService, OutgoingMessage, ProviderKind, QueueName,
    StepMessage,
};

use crate::provider::GlobalOpts;

#[cfg(feature = "kafka")]
mod raw_kafka;
#[cfg(feature = "nats")]
mod raw_nats;
#[cfg(feature = "pgmq")]
mod raw_pgmq;
#[cfg(feature = "rabbitmq")]
mod raw_rabbitmq;
#[cfg(feature = "redis")]
mod raw_redis;
#[cfg(feature = "sqs")]
mod raw_sqs;
mod report;
mod service;
mod target;
mod timed;

use report::{BenchReport, RawReport, StepReport};
use timed::{Bench, Measurement};

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
            messages: timed::share(self.messages, rounds, r),
            tasks: self.tasks,
            batch_size: self.batch_size,
            latency_samples: timed::share(self.latency_samples, rounds, r),
            templates: self.templates.clone(),
            run_id: self.run_id.clone(),
        }
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
pub fn fresh(templates: &[OutgoingMessage], i: u64) -> OutgoingMessage {
    let t = &templates[(i % templates.len() as u64) as usize];
    OutgoingMessage {
        payload: t.payload.clone(),
        message_id: MessageId::new(),
        correlation_id: t.correlation_id,
        delay: Duration::ZERO,
    }
}

/// The raw baseline registered for the configured provider, if any.
fn raw_baseline(config: &MessagingConfig) -> anyhow::Result<Option<Box<dyn Bench>>> {
    match config.provider {
        // Nothing lies beneath the in-memory provider to compare it with.
        ProviderKind::InMemory => Ok(None),
        #[cfg(feature = "pgmq")]
        ProviderKind::Pgmq => Ok(Some(Box::new(raw_pgmq::RawPgmq::from_config(config)?))),
        #[cfg(feature = "rabbitmq")]
        ProviderKind::Rabbitmq => Ok(Some(Box::new(raw_rabbitmq::RawLapin::from_config(config)?))),
        #[cfg(feature = "redis")]
        ProviderKind::Redis => Ok(
            raw_redis::RawRedis::from_config(config)?.map(|raw| Box::new(raw) as Box<dyn Bench>)
        ),
        #[cfg(feature = "sqs")]
        ProviderKind::Sqs => Ok(Some(Box::new(raw_sqs::RawSqs::from_config(config)?))),
        #[cfg(feature = "kafka")]
        ProviderKind::Kafka => Ok(Some(Box::new(raw_kafka::RawKafka::from_config(config)?))),
        #[cfg(feature = "nats")]
        ProviderKind::Nats => Ok(Some(Box::new(raw_nats::RawNats::from_config(config)?))),
        // A provider whose feature is off in this build (or with no raw client).
        #[allow(unreachable_patterns)]
        _ => Ok(None),
    }
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
    current: &Arc<Mutex<Option<QueueName>>>,
) -> anyhow::Result<()> {
    let baseline = raw_baseline(config)?;
    let provider = service::ServiceTarget::new(service.clone(), current.clone());
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
    // The raw side's progress is not drawn: the bar counts the provider's messages.
    let hidden = ProgressBar::hidden();
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
                        let m = b.run(step, &part, &hidden).await.with_context(|| {
                            format!("raw baseline ({}) step {}", b.label(), step.name())
                        });
                        if let Some(m) = finish_on_error(&bar, m)? {
                            raw_measured = Some(Measurement::absorb(raw_measured, m)?);
                        }
                    }
                    (None, true) => {}
                    (_, false) => {
                        let m = provider
                            .run(step, &part, &bar)
                            .await
                            .with_context(|| format!("bench step {}", step.name()));
                        if let Some(m) = finish_on_error(&bar, m)? {
                            measured = Some(Measurement::absorb(measured, m)?);
                        }
                    }
                }
            }
        }
        bar.finish_and_clear();
        let measured = measured.context("a bench step ran no round")?;
        let raw = raw_measured.map(|m| RawReport {
            client: baseline.as_ref().map(|b| b.label()).unwrap_or_default(),
            msg_per_sec: m.rate(),
            p50_ms: m.quantile_ms(0.5),
            p99_ms: m.quantile_ms(0.99),
            throughput_ratio: measured.rate() / m.rate().max(f64::MIN_POSITIVE),
        });
        report.steps.push(StepReport {
            step,
            description: step.describe(plan.batch_size),
            messages: measured.messages,
            seconds: measured.elapsed.as_secs_f64(),
            msg_per_sec: measured.rate(),
            timed: step.timed(),
            p50_ms: measured.quantile_ms(0.5),
            p99_ms: measured.quantile_ms(0.99),
            max_ms: measured.histogram.max() as f64 / 1e6,
            raw,
        });
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        out!("{}", report::render(&report))?;
    }
    Ok(())
}

/// Clears the progress bar before an error is printed.
fn finish_on_error<T>(bar: &ProgressBar, result: anyhow::Result<T>) -> anyhow::Result<T> {
    if result.is_err() {
        bar.finish_and_clear();
    }
    result
}

fn templates(n: u64) -> anyhow::Result<Vec<OutgoingMessage>> {
    (0..n)
        .map(|_| Ok(OutgoingMessage::json(&StepMessage::random())?))
        .collect()
}
