//! Raw lapin doing each `tasker-mq bench` step with no abstraction, for the ratio column of
//! `--provider rabbitmq`: one connection (as the provider has), its own queues of the same type
//! (`bench_<run>_<step>_raw`, deleted afterwards), the same payloads, persistent, with the
//! message and correlation ids in the AMQP properties.
//!
//! | step | raw lapin |
//! | --- | --- |
//! | send | `basic_publish` (mandatory) and await its confirm, one channel per task |
//! | send_batch(B) | publish B, then await the B confirms (window B) |
//! | receive(B) + delete | `basic_consume` with prefetch B, one `multiple` ack per B deliveries |
//! | send_batch + receive + delete | the two above, in turn, per task |
//! | latency | publish and await the confirm; time until the consumer task has the message |
//!
//! Receiving is compared with a push consumer whose prefetch is the batch (the fastest way raw
//! lapin takes B messages and settles them with one ack), not with B `basic_get`s, which a quorum
//! queue serves one Raft commit at a time (about 2k msg/s here).

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tasker_messaging::{MessagingConfig, OutgoingMessage, RabbitMqQueueType};
use tokio::sync::{mpsc, OnceCell};

use super::{
    fresh, new_histogram, parallel, record, seen_within, DrainProgress, LatencyTimer, Measurement,
    Plan, RawBaseline, Step,
};

/// How long a consumer waits for the rest of a batch before it acks what it has.
const BATCH_IDLE: Duration = Duration::from_millis(20);

pub(super) struct RawLapin {
    uri: AMQPUri,
    shown: String,
    queue_type: RabbitMqQueueType,
    connection: OnceCell<Connection>,
}

/// The raw baseline for the configured broker (connects on first use).
pub(super) fn baseline(config: &MessagingConfig) -> anyhow::Result<Box<dyn super::RawBaseline>> {
    let c = config
        .connection
        .rabbitmq
        .as_ref()
        .context("connection.rabbitmq.url is required for the raw lapin baseline")?;
    let shown = c.url.redacted();
    let mut uri = AMQPUri::from_str(c.url.expose())
        .map_err(|_| anyhow::anyhow!("invalid AMQP URL {shown}"))?;
    if let Some(vhost) = &c.vhost {
        uri.vhost = vhost.clone();
    }
    Ok(Box::new(RawLapin {
        uri,
        shown,
        queue_type: c.queue_type.unwrap_or_default(),
        connection: OnceCell::new(),
    }))
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn properties(message: &OutgoingMessage) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message.message_id.to_string()));
    if let Some(c) = message.correlation_id {
        props = props.with_correlation_id(ShortString::from(c.to_string()));
    }
    props
}

async fn confirm_channel(conn: &Connection) -> anyhow::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Publishes `messages` to `queue`, all before awaiting any confirm; fails on a nack or a
/// return.
async fn publish(ch: &Channel, queue: &str, messages: &[OutgoingMessage]) -> anyhow::Result<()> {
    let mut confirms = Vec::with_capacity(messages.len());
    for m in messages {
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &m.payload,
                properties(m),
            )
            .await?,
        );
    }
    for c in futures::future::join_all(confirms).await {
        let c = c?;
        anyhow::ensure!(
            matches!(c, Confirmation::Ack(None)),
            "the broker did not take a message: {c:?}"
        );
    }
    Ok(())
}

/// A channel with prefetch `prefetch` and a consumer on it.
async fn consumer(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<(Channel, Consumer)> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let tag = format!("raw-bench-{}", uuid::Uuid::new_v4().simple());
    let consumer = ch
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((ch, consumer))
}

async fn close(ch: &Channel, consumer: &Consumer) {
    let _ = ch
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    let _ = ch.close(200, "done".into()).await;
}

/// Takes up to `want` deliveries, stopping early when none came for [`BATCH_IDLE`] or when
/// `enough` says the step has them all; returns how many came and the last delivery tag.
async fn take(
    consumer: &mut Consumer,
    want: u64,
    enough: impl Fn(u64) -> bool,
) -> anyhow::Result<(u64, Option<u64>)> {
    let mut got = 0;
    let mut last = None;
    while got < want && !enough(got) {
        match tokio::time::timeout(BATCH_IDLE, consumer.next()).await {
            Ok(Some(d)) => {
                last = Some(d?.delivery_tag);
                got += 1;
            }
            Ok(None) => anyhow::bail!("the raw consumer was cancelled"),
            Err(_) => break,
        }
    }
    Ok((got, last))
}

/// Consumes and acks (one `multiple` ack per batch) until `acked` reaches `target`.
async fn drain(
    ch: &Channel,
    consumer: &mut Consumer,
    batch: u64,
    acked: &AtomicU64,
    target: u64,
    h: &mut Histogram<u64>,
) -> anyhow::Result<u64> {
    let mut progress = DrainProgress::new(acked, target);
    while progress.unfinished() {
        let t = Instant::now();
        let (n, last) = take(consumer, batch, |got| progress.total() + got >= target).await?;
        let Some(last) = last else {
            progress.idle("raw lapin consume")?;
            continue;
        };
        ch.basic_ack(last, BasicAckOptions { multiple: true })
            .await?;
        progress.acked(n, h, t);
    }
    Ok(progress.mine)
}

impl RawLapin {
    async fn conn(&self) -> anyhow::Result<&Connection> {
        self.connection
            .get_or_try_init(|| async {
                Connection::connect_uri(
                    self.uri.clone(),
                    ConnectionProperties::default()
                        .with_connection_name("tasker-mq bench (raw lapin)".into()),
                )
                .await
                .map_err(|e| {
                    // lapin's message may quote the URL: say only the redacted one.
                    anyhow::anyhow!("raw lapin cannot connect to {}: {:?}", self.shown, e.kind())
                })
            })
            .await
    }

    async fn declare(&self, conn: &Connection, queue: &str) -> anyhow::Result<()> {
        let ch = conn.create_channel().await?;
        let mut args = FieldTable::default();
        let kind = match self.queue_type {
            RabbitMqQueueType::Quorum => "quorum",
            RabbitMqQueueType::Classic => "classic",
        };
        args.insert("x-queue-type".into(), long_string(kind));
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
        let _ = ch.close(200, "done".into()).await;
        Ok(())
    }

    async fn delete(&self, conn: &Connection, queue: &str) -> anyhow::Result<()> {
        let ch = conn.create_channel().await?;
        ch.queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
        let _ = ch.close(200, "done".into()).await;
        Ok(())
    }

    async fn step(
        &self,
        step: Step,
        plan: &Plan,
        conn: &Connection,
        queue: &str,
    ) -> anyhow::Result<Measurement> {
        match step {
            Step::Send | Step::SendBatch => {
                let per_call = if step == Step::Send {
                    1
                } else {
                    plan.batch_size
                };
                let mut channels = Vec::with_capacity(plan.tasks as usize);
                for _ in 0..plan.tasks {
                    channels.push(confirm_channel(conn).await?);
                }
                let m = parallel(plan, |task, n| {
                    let ch = channels[task as usize].clone();
                    let (queue, templates) = (queue.to_owned(), plan.templates.clone());
                    async move {
                        let mut h = new_histogram();
                        let mut sent = 0;
                        while sent < n {
                            let k = per_call.min(n - sent);
                            let messages: Vec<_> = (sent..sent + k)
                                .map(|i| fresh(&templates, task * n + i))
                                .collect();
                            let t = Instant::now();
                            publish(&ch, &queue, &messages).await?;
                            record(&mut h, t);
                            sent += k;
                        }
                        Ok((n, h))
                    }
                })
                .await;
                for ch in channels {
                    let _ = ch.close(200, "done".into()).await;
                }
                m
            }
            // A push consumer either way: the raw client's way to receive.
            Step::ReceiveAck | Step::ConsumeAck => {
                let filler = confirm_channel(conn).await?;
                let mut filled = 0;
                while filled < plan.messages {
                    let k = plan.batch_size.min(plan.messages - filled);
                    let messages: Vec<_> = (filled..filled + k).map(|i| plan.message(i)).collect();
                    publish(&filler, queue, &messages).await?;
                    filled += k;
                }
                let _ = filler.close(200, "done".into()).await;
                self.consume_all(plan, conn, queue, false).await
            }
            Step::SendReceiveAck => self.consume_all(plan, conn, queue, true).await,
            Step::Latency => self.latency(plan, conn, queue).await,
        }
    }

    /// Receive+ack (and, with `send`, a confirmed batch published before each receive) by
    /// `plan.tasks` consumers with prefetch = batch, until every message is acked.
    async fn consume_all(
        &self,
        plan: &Plan,
        conn: &Connection,
        queue: &str,
        send: bool,
    ) -> anyhow::Result<Measurement> {
        let batch = plan.batch_size;
        let prefetch = u16::try_from(batch).unwrap_or(u16::MAX);
        let mut parts = Vec::with_capacity(plan.tasks as usize);
        for _ in 0..plan.tasks {
            let publisher = if send {
                Some(confirm_channel(conn).await?)
            } else {
                None
            };
            let (ch, consumer) = consumer(conn, queue, prefetch).await?;
            parts.push(tokio::sync::Mutex::new(Some((publisher, ch, consumer))));
        }
        let parts = Arc::new(parts);
        let acked = Arc::new(AtomicU64::new(0));
        let target = plan.messages;
        let m = parallel(plan, |task, n| {
            let (parts, acked, queue) = (parts.clone(), acked.clone(), queue.to_owned());
            let templates = plan.templates.clone();
            async move {
                let (publisher, ch, mut consumer) = parts[task as usize]
                    .lock()
                    .await
                    .take()
                    .context("each task takes its own channels")?;
                let mut h = new_histogram();
                let mut mine = 0;
                if let Some(publisher) = &publisher {
                    let mut sent = 0;
                    while sent < n {
                        let k = batch.min(n - sent);
                        let messages: Vec<_> = (sent..sent + k)
                            .map(|i| fresh(&templates, task * n + i))
                            .collect();
                        let t = Instant::now();
                        publish(publisher, &queue, &messages).await?;
                        let (got, last) = take(&mut consumer, k, |_| false).await?;
                        if let Some(last) = last {
                            ch.basic_ack(last, BasicAckOptions { multiple: true })
                                .await?;
                        }
                        record(&mut h, t);
                        sent += k;
                        mine += got;
                        acked.fetch_add(got, Ordering::Relaxed);
                    }
                }
                mine += drain(&ch, &mut consumer, batch, &acked, target, &mut h).await?;
                close(&ch, &consumer).await;
                if let Some(p) = publisher {
                    let _ = p.close(200, "done".into()).await;
                }
                Ok((mine, h))
            }
        })
        .await?;
        anyhow::ensure!(
            m.messages == target,
            "raw lapin acked {} of {target} messages",
            m.messages
        );
        Ok(m)
    }

    async fn latency(
        &self,
        plan: &Plan,
        conn: &Connection,
        queue: &str,
    ) -> anyhow::Result<Measurement> {
        let prefetch = u16::try_from(plan.batch_size).unwrap_or(u16::MAX);
        let (ch, mut consumer) = consumer(conn, queue, prefetch).await?;
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<anyhow::Result<(String, Instant)>>();
        let task = {
            let ch = ch.clone();
            tokio::spawn(async move {
                while let Some(d) = consumer.next().await {
                    let seen = Instant::now();
                    let d = match d {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = seen_tx.send(Err(e.into()));
                            break;
                        }
                    };
                    let id = d
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    let _ = seen_tx.send(Ok((id, seen)));
                    // Acked after reporting: the ack is not part of the latency.
                    if let Err(e) = ch
                        .basic_ack(d.delivery_tag, BasicAckOptions::default())
                        .await
                    {
                        let _ = seen_tx.send(Err(e.into()));
                    }
                }
            })
        };
        let publisher = confirm_channel(conn).await?;
        let result = async {
            let mut timer = LatencyTimer::new(plan);
            for i in 0..timer.round_trips() {
                timer.begin(i);
                let message = plan.message(i);
                let id = message.message_id.to_string();
                let start = Instant::now();
                publish(&publisher, queue, std::slice::from_ref(&message)).await?;
                let seen = seen_within(&mut seen_rx, &id, "raw lapin consumer").await?;
                timer.record(i, start, seen);
            }
            Ok(timer.finish())
        }
        .await;
        task.abort();
        let _ = task.await;
        let _ = ch.close(200, "done".into()).await;
        let _ = publisher.close(200, "done".into()).await;
        result
    }
}

#[async_trait]
impl RawBaseline for RawLapin {
    fn client(&self) -> String {
        "lapin 4".into()
    }

    async fn run(&self, step: Step, plan: &Plan) -> anyhow::Result<Option<Measurement>> {
        let conn = self.conn().await?;
        let queue = format!("{}_raw", plan.queue_for(step)?);
        self.declare(conn, &queue)
            .await
            .with_context(|| format!("raw lapin: declaring {queue}"))?;
        let result = self.step(step, plan, conn, &queue).await;
        let cleanup = self
            .delete(conn, &queue)
            .await
            .with_context(|| format!("raw lapin: deleting {queue}"));
        let measured = result?;
        cleanup?;
        Ok(Some(measured))
    }
}
