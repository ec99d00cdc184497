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
//! | consume + ack | the same push consumer |
//! | send_batch + receive + delete | the two above, in turn, per task |
//! | latency | publish and await the confirm; time until the consumer task has the message |
//!
//! Receiving is compared with a push consumer whose prefetch is the batch (the fastest way raw
//! lapin takes B messages and settles them with one ack), not with B `basic_get`s, which a quorum
//! queue serves one Raft commit at a time (about 2k msg/s here).

use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tasker_messaging::{MessagingConfig, OutgoingMessage, QueueName, RabbitMqQueueType};
use tokio::sync::OnceCell;

use super::target::{Client, SeenTx, Target, Watch};
use super::{fresh, Plan, Step};

/// How long a consumer waits for the rest of a batch before it acks what it has.
const BATCH_IDLE: Duration = Duration::from_millis(20);

pub struct RawLapin {
    uri: AMQPUri,
    shown: String,
    queue_type: RabbitMqQueueType,
    connection: OnceCell<Connection>,
}

impl RawLapin {
    /// The raw baseline for the configured broker (connects on first use).
    pub fn from_config(config: &MessagingConfig) -> anyhow::Result<Self> {
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
        Ok(RawLapin {
            uri,
            shown,
            queue_type: c.queue_type.unwrap_or_default(),
            connection: OnceCell::new(),
        })
    }
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

/// Takes up to `want` deliveries, stopping early when none came for [`BATCH_IDLE`]; returns
/// how many came and the last delivery tag.
async fn take(consumer: &mut Consumer, want: u64) -> anyhow::Result<(u64, Option<u64>)> {
    let mut got = 0;
    let mut last = None;
    while got < want {
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

    fn prefetch(plan: &Plan) -> u16 {
        u16::try_from(plan.batch_size).unwrap_or(u16::MAX)
    }
}

impl Target for RawLapin {
    type Client = LapinClient;

    fn label(&self) -> String {
        "lapin 4".into()
    }

    async fn create_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        let ch = self.conn().await?.create_channel().await?;
        let mut args = FieldTable::default();
        let kind = match self.queue_type {
            RabbitMqQueueType::Quorum => "quorum",
            RabbitMqQueueType::Classic => "classic",
        };
        args.insert("x-queue-type".into(), long_string(kind));
        ch.queue_declare(
            queue.as_str().into(),
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

    async fn delete_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        let ch = self.conn().await?.create_channel().await?;
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await?;
        let _ = ch.close(200, "done".into()).await;
        Ok(())
    }

    /// A confirm channel to publish on and/or a consumer with prefetch = batch, as the step
    /// needs (a push consumer either way: the raw client's way to receive).
    async fn client(
        &self,
        queue: &QueueName,
        step: Step,
        plan: &Plan,
    ) -> anyhow::Result<LapinClient> {
        let conn = self.conn().await?;
        let publishes = matches!(
            step,
            Step::Send | Step::SendBatch | Step::SendReceiveAck | Step::Latency
        );
        let receives = matches!(
            step,
            Step::ReceiveAck | Step::ConsumeAck | Step::SendReceiveAck
        );
        let publisher = match publishes {
            true => Some(confirm_channel(conn).await?),
            false => None,
        };
        let consumer = match receives {
            true => Some(consumer(conn, queue.as_str(), Self::prefetch(plan)).await?),
            false => None,
        };
        Ok(LapinClient {
            queue: queue.to_string(),
            templates: plan.templates.clone(),
            publisher,
            consumer,
        })
    }

    async fn watch(&self, queue: &QueueName, plan: &Plan) -> anyhow::Result<Watch> {
        let (ch, mut consumer) =
            consumer(self.conn().await?, queue.as_str(), Self::prefetch(plan)).await?;
        let acker = ch.clone();
        let deliveries = |seen: SeenTx| async move {
            while let Some(d) = consumer.next().await {
                let at = Instant::now();
                let d = match d {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = seen.send(Err(e.into()));
                        break;
                    }
                };
                let id = d
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|s| s.as_str().parse().ok());
                let _ = seen.send(Ok((id, at)));
                // Acked after reporting: the ack is not part of the latency.
                if let Err(e) = acker
                    .basic_ack(d.delivery_tag, BasicAckOptions::default())
                    .await
                {
                    let _ = seen.send(Err(e.into()));
                }
            }
        };
        let cleanup = async move {
            let _ = ch.close(200, "done".into()).await;
        };
        Ok(Watch::spawn(deliveries, cleanup))
    }
}

pub struct LapinClient {
    queue: String,
    templates: std::sync::Arc<Vec<OutgoingMessage>>,
    publisher: Option<Channel>,
    consumer: Option<(Channel, Consumer)>,
}

impl Client for LapinClient {
    type Message = OutgoingMessage;

    fn message(&self, i: u64) -> OutgoingMessage {
        fresh(&self.templates, i)
    }

    fn message_id(message: &OutgoingMessage) -> Option<tasker_messaging::MessageId> {
        Some(message.message_id)
    }

    async fn send(&mut self, message: OutgoingMessage) -> anyhow::Result<()> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&mut self, messages: Vec<OutgoingMessage>) -> anyhow::Result<()> {
        let ch = self
            .publisher
            .as_ref()
            .context("this step's raw client does not publish")?;
        publish(ch, &self.queue, &messages).await
    }

    /// Up to `max` deliveries from the push consumer, settled with one `multiple` ack.
    async fn receive_ack(&mut self, max: u64) -> anyhow::Result<u64> {
        let (ch, consumer) = self
            .consumer
            .as_mut()
            .context("this step's raw client does not consume")?;
        let (got, last) = take(consumer, max).await?;
        if let Some(last) = last {
            ch.basic_ack(last, BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(got)
    }

    async fn close(self) {
        if let Some((ch, consumer)) = &self.consumer {
            close(ch, consumer).await;
        }
        if let Some(p) = &self.publisher {
            let _ = p.close(200, "done".into()).await;
        }
    }
}
