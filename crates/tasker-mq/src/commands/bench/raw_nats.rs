//! Raw async-nats doing each `tasker-mq bench` step with no abstraction, for the ratio
//! column of `--provider nats`: one connection (as the provider has), its own work-queue
//! streams and durable pull consumers configured as the provider's (`bench_<run>_<step>_raw`,
//! deleted afterwards), the same payloads, with the message and correlation ids in headers.
//!
//! | step | raw async-nats |
//! | --- | --- |
//! | send | JetStream publish, await its ack |
//! | send_batch(B) | B publishes, then await the B acks |
//! | receive(B) + delete | one `no_wait` pull request for B, `+ACK` each, the last as a request |
//! | consume + ack | the same, in a loop |
//! | send_batch + receive + delete | the two above, in turn, per task |
//! | latency | publish and await the ack; a long pull request (expires 1 s) delivers it |

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::header::HeaderMap;
use async_nats::{Client, StatusCode, Subject};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use tasker_messaging::{MessagingConfig, OutgoingMessage, QueueName};
use tokio::sync::OnceCell;

use super::target::{Client as BenchClient, SeenTx, Target, Watch};
use super::{fresh, Plan, Step};

pub struct RawNats {
    url: String,
    shown: String,
    link: OnceCell<(Client, async_nats::jetstream::Context)>,
}

impl RawNats {
    /// The raw baseline for the configured server (connects on first use).
    pub fn from_config(config: &MessagingConfig) -> anyhow::Result<Self> {
        let c = config
            .connection
            .nats
            .as_ref()
            .context("connection.nats.url is required for the raw async-nats baseline")?;
        Ok(RawNats {
            url: c.url.expose().to_owned(),
            shown: c.url.redacted(),
            link: OnceCell::new(),
        })
    }

    async fn link(&self) -> anyhow::Result<&(Client, async_nats::jetstream::Context)> {
        self.link
            .get_or_try_init(|| async {
                let servers: Vec<&str> = self.url.split(',').map(str::trim).collect();
                let client = async_nats::ConnectOptions::new()
                    .name("tasker-mq bench (raw async-nats)")
                    .subscription_capacity(16 * 1024)
                    .connect(servers)
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "raw async-nats cannot connect to {}: {}",
                            self.shown,
                            e.kind()
                        )
                    })?;
                let js = async_nats::jetstream::new(client.clone());
                Ok::<_, anyhow::Error>((client, js))
            })
            .await
    }

    async fn api(&self, subject: String, body: serde_json::Value) -> anyhow::Result<()> {
        let (_, js) = self.link().await?;
        let answer: serde_json::Value = js.request(subject.clone(), &body).await?;
        anyhow::ensure!(answer.get("error").is_none(), "{subject}: {answer}");
        Ok(())
    }
}

fn headers(m: &OutgoingMessage) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("Tasker-Id", m.message_id.to_string().as_str());
    if let Some(c) = m.correlation_id {
        h.insert("Tasker-Correlation", c.to_string().as_str());
    }
    h
}

/// One pull request for up to `n` (`no_wait`, or a long poll of `expires`); the deliveries.
async fn pull(
    client: &Client,
    next: &Subject,
    n: u64,
    expires: Option<Duration>,
) -> anyhow::Result<Vec<async_nats::Message>> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await?;
    let body = match expires {
        None => json!({"batch": n, "no_wait": true}),
        Some(e) => json!({"batch": n, "expires": e.as_nanos() as u64}),
    };
    client
        .publish_with_reply(next.clone(), inbox, serde_json::to_vec(&body)?.into())
        .await?;
    let mut out = Vec::with_capacity(n as usize);
    while (out.len() as u64) < n {
        let Some(m) = tokio::time::timeout(Duration::from_secs(10), sub.next()).await? else {
            break;
        };
        match m.status {
            None | Some(StatusCode::OK) => out.push(m),
            Some(StatusCode::NOT_FOUND) | Some(StatusCode::TIMEOUT) => break,
            Some(s) => anyhow::bail!("pull request answered {s}"),
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(out)
}

/// `+ACK` to each delivery, the last one as a request the server answers.
async fn ack(client: &Client, messages: &[async_nats::Message]) -> anyhow::Result<()> {
    let Some((last, rest)) = messages.split_last() else {
        return Ok(());
    };
    for m in rest {
        if let Some(r) = &m.reply {
            client
                .publish(r.clone(), Bytes::from_static(b"+ACK"))
                .await?;
        }
    }
    if let Some(r) = &last.reply {
        client
            .request(r.clone(), Bytes::from_static(b"+ACK"))
            .await?;
    }
    Ok(())
}

impl Target for RawNats {
    type Client = NatsClient;

    fn label(&self) -> String {
        "async-nats 0.46".into()
    }

    async fn create_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        let subject = format!("tasker.{queue}");
        self.api(
            format!("STREAM.CREATE.{queue}"),
            json!({"name": queue.as_str(), "subjects": [subject], "retention": "workqueue",
                   "storage": "file", "num_replicas": 1, "discard": "old"}),
        )
        .await?;
        self.api(
            format!("CONSUMER.DURABLE.CREATE.{queue}.tasker"),
            json!({"stream_name": queue.as_str(), "config": {
                "durable_name": "tasker", "deliver_policy": "all", "ack_policy": "explicit",
                "ack_wait": 30_000_000_000u64, "max_deliver": -1, "filter_subject": subject,
                "max_ack_pending": -1, "max_waiting": 512}}),
        )
        .await
    }

    async fn delete_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        self.api(format!("STREAM.DELETE.{queue}"), json!({})).await
    }

    async fn client(
        &self,
        queue: &QueueName,
        _step: Step,
        plan: &Plan,
    ) -> anyhow::Result<NatsClient> {
        let (client, js) = self.link().await?;
        Ok(NatsClient {
            client: client.clone(),
            js: js.clone(),
            subject: format!("tasker.{queue}").into(),
            next: format!("$JS.API.CONSUMER.MSG.NEXT.{queue}.tasker").into(),
            templates: plan.templates.clone(),
        })
    }

    async fn watch(&self, queue: &QueueName, plan: &Plan) -> anyhow::Result<Watch> {
        let (client, _) = self.link().await?;
        let client = client.clone();
        let next: Subject = format!("$JS.API.CONSUMER.MSG.NEXT.{queue}.tasker").into();
        // One message per long pull request: a request for more is answered only when
        // that many came or it expired.
        let _ = plan;
        let deliveries = |seen: SeenTx| async move {
            loop {
                let got = match pull(&client, &next, 1, Some(Duration::from_secs(1))).await {
                    Ok(got) => got,
                    Err(e) => {
                        let _ = seen.send(Err(e));
                        break;
                    }
                };
                let at = Instant::now();
                for m in &got {
                    let id = m
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Tasker-Id"))
                        .and_then(|v| v.as_str().parse().ok());
                    let _ = seen.send(Ok((id, at)));
                }
                // Acked after reporting: the ack is not part of the latency.
                if let Err(e) = ack(&client, &got).await {
                    let _ = seen.send(Err(e));
                }
            }
        };
        Ok(Watch::spawn(deliveries, async {}))
    }
}

pub struct NatsClient {
    client: Client,
    js: async_nats::jetstream::Context,
    subject: Subject,
    next: Subject,
    templates: std::sync::Arc<Vec<OutgoingMessage>>,
}

impl BenchClient for NatsClient {
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
        let mut acks = Vec::with_capacity(messages.len());
        for m in messages {
            let h = headers(&m);
            acks.push(
                self.js
                    .publish_with_headers(self.subject.clone(), h, m.payload)
                    .await?,
            );
        }
        for a in acks {
            a.await?;
        }
        Ok(())
    }

    async fn receive_ack(&mut self, max: u64) -> anyhow::Result<u64> {
        let got = pull(&self.client, &self.next, max, None).await?;
        ack(&self.client, &got).await?;
        Ok(got.len() as u64)
    }

    async fn idle(&mut self) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
