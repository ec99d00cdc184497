//! Raw rdkafka doing each `tasker-mq bench` step with no abstraction, for the ratio column of
//! `--provider kafka`: one producer (as the provider has), its own one-partition topics
//! (`bench_<run>_<step>_raw`, deleted afterwards), the same payloads, the message id as the
//! record key and the correlation id in a header, with the producer and consumer settings the
//! provider uses (`acks=all`, `linger.ms=1`, `fetch.wait.max.ms=20`).
//!
//! | step | raw rdkafka |
//! | --- | --- |
//! | send | `FutureProducer::send_result` and await the delivery |
//! | send_batch(B) | B `send_result`s, then await the B deliveries |
//! | receive(B) + delete | a `StreamConsumer` in its own group: up to B records, then one `store_offsets` of the last (committed by auto-commit) |
//! | consume + ack | the same consumer |
//! | send_batch + receive + delete | the two above, in turn, per task |
//! | latency | produce and await the delivery; time until the consumer task has the record |
//!
//! Kafka's own "ack" is moving the group's offset: a raw consumer has no per-message ack, no
//! lease and no receive count, which is what the provider adds on top.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tasker_messaging::{MessageId, MessagingConfig, OutgoingMessage, QueueName};

use super::target::{Client, SeenTx, Target, Watch};
use super::{fresh, Plan, Step};

/// How long a consumer waits for the rest of a batch before it acks what it has.
const BATCH_IDLE: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct RawKafka {
    brokers: String,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
}

impl RawKafka {
    /// The raw baseline for the configured brokers.
    pub fn from_config(config: &MessagingConfig) -> anyhow::Result<Self> {
        let brokers = config
            .connection
            .kafka
            .as_ref()
            .context("connection.kafka.brokers is required for the raw rdkafka baseline")?
            .brokers
            .clone();
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("message.timeout.ms", "10000")
            .set("linger.ms", "1")
            .set("acks", "all")
            .create()?;
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        Ok(RawKafka {
            brokers,
            producer,
            admin,
        })
    }

    fn consumer(&self, queue: &QueueName) -> anyhow::Result<StreamConsumer> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("raw-{queue}"))
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "200")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "20")
            .create()?;
        consumer.subscribe(&[queue.as_str()])?;
        Ok(consumer)
    }
}

/// Produces `messages` to `topic`, all before awaiting any delivery.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    messages: &[OutgoingMessage],
) -> anyhow::Result<()> {
    let mut deliveries = Vec::with_capacity(messages.len());
    for m in messages {
        let key = m.message_id.0.as_bytes();
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .key(&key[..])
            .payload(&m.payload[..]);
        if let Some(c) = m.correlation_id {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "tasker-correlation-id",
                value: Some(&c.0.as_bytes()[..]),
            }));
        }
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?,
        );
    }
    for d in deliveries {
        d.await
            .context("the producer was dropped")?
            .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
    }
    Ok(())
}

impl Target for RawKafka {
    type Client = KafkaClient;

    fn label(&self) -> String {
        "rdkafka 0.39".into()
    }

    async fn create_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        let topic = NewTopic::new(queue.as_str(), 1, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        for r in self.admin.create_topics([&topic], &opts).await? {
            r.map_err(|(t, code)| anyhow::anyhow!("create topic {t}: {code}"))?;
        }
        Ok(())
    }

    async fn delete_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        for r in self.admin.delete_topics(&[queue.as_str()], &opts).await? {
            r.map_err(|(t, code)| anyhow::anyhow!("delete topic {t}: {code}"))?;
        }
        let group = format!("raw-{queue}");
        let _ = self.admin.delete_groups(&[group.as_str()], &opts).await;
        Ok(())
    }

    async fn client(
        &self,
        queue: &QueueName,
        step: Step,
        plan: &Plan,
    ) -> anyhow::Result<KafkaClient> {
        let receives = matches!(
            step,
            Step::ReceiveAck | Step::ConsumeAck | Step::SendReceiveAck
        );
        let consumer = match receives {
            true => Some(self.consumer(queue)?),
            false => None,
        };
        Ok(KafkaClient {
            topic: queue.to_string(),
            templates: plan.templates.clone(),
            producer: self.producer.clone(),
            consumer,
        })
    }

    async fn watch(&self, queue: &QueueName, _plan: &Plan) -> anyhow::Result<Watch> {
        let consumer = self.consumer(queue)?;
        let topic = queue.to_string();
        let records = |seen: SeenTx| async move {
            loop {
                let record = consumer.recv().await;
                let at = Instant::now();
                match record {
                    Ok(m) => {
                        let id = m
                            .key()
                            .and_then(|k| uuid::Uuid::from_slice(k).ok())
                            .map(MessageId);
                        let _ = seen.send(Ok((id, at)));
                        let mut tpl = TopicPartitionList::new();
                        let _ = tpl.add_partition_offset(
                            &topic,
                            m.partition(),
                            Offset::Offset(m.offset() + 1),
                        );
                        let _ = consumer.store_offsets(&tpl);
                    }
                    Err(e) => {
                        let _ = seen.send(Err(e.into()));
                        break;
                    }
                }
            }
        };
        Ok(Watch::spawn(records, async {}))
    }
}

pub struct KafkaClient {
    topic: String,
    templates: std::sync::Arc<Vec<OutgoingMessage>>,
    producer: FutureProducer,
    consumer: Option<StreamConsumer>,
}

impl Client for KafkaClient {
    type Message = OutgoingMessage;

    fn message(&self, i: u64) -> OutgoingMessage {
        fresh(&self.templates, i)
    }

    fn message_id(message: &OutgoingMessage) -> Option<MessageId> {
        Some(message.message_id)
    }

    async fn send(&mut self, message: OutgoingMessage) -> anyhow::Result<()> {
        produce(&self.producer, &self.topic, std::slice::from_ref(&message)).await
    }

    async fn send_batch(&mut self, messages: Vec<OutgoingMessage>) -> anyhow::Result<()> {
        produce(&self.producer, &self.topic, &messages).await
    }

    /// Up to `max` records, then one offset store past the last of each partition.
    async fn receive_ack(&mut self, max: u64) -> anyhow::Result<u64> {
        let consumer = self
            .consumer
            .as_ref()
            .context("this step's raw client does not consume")?;
        let mut got = 0;
        let mut last: Vec<(i32, i64)> = Vec::new();
        while got < max {
            match tokio::time::timeout(BATCH_IDLE, consumer.recv()).await {
                Ok(Ok(m)) => {
                    got += 1;
                    match last.iter_mut().find(|(p, _)| *p == m.partition()) {
                        Some(slot) => slot.1 = m.offset() + 1,
                        None => last.push((m.partition(), m.offset() + 1)),
                    }
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => break,
            }
        }
        if !last.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in last {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))?;
            }
            consumer.store_offsets(&tpl)?;
        }
        Ok(got)
    }
}
