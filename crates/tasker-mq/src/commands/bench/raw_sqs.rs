//! Raw `aws-sdk-sqs` doing each `tasker-mq bench` step with no abstraction, for the ratio
//! column of `--provider sqs`: one client built like the provider's (same endpoint, region,
//! credentials, HTTPS stack), its own queues of the same kind (`bench_<run>_<step>_raw`,
//! `.fifo` when the provider's are, deleted afterwards), the same payloads as bodies, with the
//! message and correlation ids as message attributes (as the provider sends them).
//!
//! | step | raw aws-sdk-sqs |
//! | --- | --- |
//! | send | `SendMessage` |
//! | send_batch(B) | `SendMessageBatch` in chunks of 10, all chunks at once |
//! | receive(B) + delete | `ReceiveMessage` (at most 10, no long poll) + `DeleteMessageBatch` |
//! | consume + ack | the same loop (SQS has no push consumer) |
//! | send_batch + receive + delete | the two above, in turn, per task |
//! | latency | `SendMessage`; time until a polling consumer has the message |
//!
//! A receive asks for what the provider hands out: the message attributes (ids) and the
//! system attributes `SentTimestamp` and `ApproximateReceiveCount` (enqueue time, receive
//! count). An empty receive is followed by a 5 ms pause (the provider's `idle` waits as long).

use std::time::{Duration, Instant};

use anyhow::Context;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client as SqsClient;
use tasker_messaging::{MessagingConfig, OutgoingMessage, QueueName, SqsSettings};
use tokio::sync::OnceCell;

use super::target::{Client, SeenTx, Target, Watch};
use super::{fresh, Plan, Step};

const LEASE_SECS: i32 = 30;
const IDLE: Duration = Duration::from_millis(5);
const ID_ATTR: &str = tasker_messaging::ATTR_MESSAGE_ID;
const CORRELATION_ATTR: &str = tasker_messaging::ATTR_CORRELATION_ID;

pub struct RawSqs {
    settings: SqsSettings,
    client: OnceCell<SqsClient>,
}

impl RawSqs {
    pub fn from_config(config: &MessagingConfig) -> anyhow::Result<Self> {
        Ok(RawSqs {
            settings: SqsSettings::from_config(config)?,
            client: OnceCell::new(),
        })
    }

    async fn client(&self) -> anyhow::Result<&SqsClient> {
        self.client
            .get_or_try_init(|| async {
                use aws_smithy_http_client::tls;
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(tls::Provider::Rustls(
                        tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(self.settings.region.clone()))
                    .http_client(http);
                let mut creds = self.settings.credentials.clone();
                if let Some((endpoint, from_url)) = self.settings.endpoint_parts()? {
                    loader = loader.endpoint_url(endpoint);
                    creds = creds.or(from_url);
                }
                if let Some(c) = creds {
                    loader = loader.credentials_provider(Credentials::new(
                        c.access_key_id.clone(),
                        c.secret_access_key().to_owned(),
                        None,
                        None,
                        "tasker-mq bench (raw)",
                    ));
                }
                anyhow::Ok(SqsClient::new(&loader.load().await))
            })
            .await
    }

    fn name(&self, queue: &QueueName) -> String {
        if self.settings.fifo {
            format!("{queue}.fifo")
        } else {
            queue.to_string()
        }
    }
}

fn string_attr(v: String) -> anyhow::Result<MessageAttributeValue> {
    Ok(MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()?)
}

impl Target for RawSqs {
    type Client = RawSqsClient;

    fn label(&self) -> String {
        "aws-sdk-sqs 1".into()
    }

    async fn create_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        let mut req = self
            .client()
            .await?
            .create_queue()
            .queue_name(self.name(queue));
        if self.settings.fifo {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
        }
        req.send().await.context("raw CreateQueue")?;
        Ok(())
    }

    async fn delete_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        let c = self.client().await?;
        let url = c
            .get_queue_url()
            .queue_name(self.name(queue))
            .send()
            .await?;
        c.delete_queue()
            .set_queue_url(url.queue_url)
            .send()
            .await
            .context("raw DeleteQueue")?;
        Ok(())
    }

    async fn client(
        &self,
        queue: &QueueName,
        _: Step,
        plan: &Plan,
    ) -> anyhow::Result<RawSqsClient> {
        let client = self.client().await?.clone();
        let url = client
            .get_queue_url()
            .queue_name(self.name(queue))
            .send()
            .await?
            .queue_url
            .context("no queue URL")?;
        Ok(RawSqsClient {
            client,
            url,
            fifo: self.settings.fifo,
            templates: plan.templates.clone(),
        })
    }

    async fn watch(&self, queue: &QueueName, plan: &Plan) -> anyhow::Result<Watch> {
        let mut c = Target::client(self, queue, Step::Latency, plan).await?;
        let consumer = |seen: SeenTx| async move {
            loop {
                match c.receive(10).await {
                    Ok(got) if got.is_empty() => tokio::time::sleep(IDLE).await,
                    Ok(got) => {
                        let at = Instant::now();
                        for (id, _) in &got {
                            let _ = seen.send(Ok((*id, at)));
                        }
                        if let Err(e) = c.delete(got.into_iter().map(|(_, r)| r).collect()).await {
                            let _ = seen.send(Err(e));
                        }
                    }
                    Err(e) => {
                        let _ = seen.send(Err(e));
                        break;
                    }
                }
            }
        };
        Ok(Watch::spawn(consumer, async {}))
    }
}

pub struct RawSqsClient {
    client: SqsClient,
    url: String,
    fifo: bool,
    templates: std::sync::Arc<Vec<OutgoingMessage>>,
}

impl RawSqsClient {
    fn entry(&self, i: usize, m: OutgoingMessage) -> anyhow::Result<SendMessageBatchRequestEntry> {
        let mut b = SendMessageBatchRequestEntry::builder()
            .id(i.to_string())
            .message_body(String::from_utf8(m.payload.to_vec())?)
            .message_attributes(ID_ATTR, string_attr(m.message_id.to_string())?);
        if let Some(c) = m.correlation_id {
            b = b.message_attributes(CORRELATION_ATTR, string_attr(c.to_string())?);
        }
        if self.fifo {
            let group = m
                .correlation_id
                .map_or(m.message_id.to_string(), |c| c.to_string());
            b = b
                .message_group_id(group)
                .message_deduplication_id(m.message_id.to_string());
        }
        Ok(b.build()?)
    }

    /// Up to `max` (at most 10) messages: their ids and receipt handles.
    async fn receive(
        &mut self,
        max: u64,
    ) -> anyhow::Result<Vec<(Option<tasker_messaging::MessageId>, String)>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.min(10) as i32)
            .visibility_timeout(LEASE_SECS)
            .wait_time_seconds(0)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                let id = m
                    .message_attributes
                    .as_ref()
                    .and_then(|a| a.get(ID_ATTR))
                    .and_then(|v| v.string_value.as_deref())
                    .and_then(|s| s.parse().ok());
                Some((id, m.receipt_handle?))
            })
            .collect())
    }

    async fn delete(&mut self, handles: Vec<String>) -> anyhow::Result<()> {
        let entries = handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await?;
        anyhow::ensure!(out.failed.is_empty(), "raw delete refused {:?}", out.failed);
        Ok(())
    }
}

impl Client for RawSqsClient {
    type Message = OutgoingMessage;

    fn message(&self, i: u64) -> OutgoingMessage {
        fresh(&self.templates, i)
    }

    fn message_id(message: &OutgoingMessage) -> Option<tasker_messaging::MessageId> {
        Some(message.message_id)
    }

    async fn send(&mut self, m: OutgoingMessage) -> anyhow::Result<()> {
        let e = self.entry(0, m)?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(e.message_body)
            .set_message_attributes(e.message_attributes)
            .set_message_group_id(e.message_group_id)
            .set_message_deduplication_id(e.message_deduplication_id)
            .send()
            .await?;
        Ok(())
    }

    async fn send_batch(&mut self, messages: Vec<OutgoingMessage>) -> anyhow::Result<()> {
        let entries = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| self.entry(i, m))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let calls = entries.chunks(10).map(|chunk| {
            self.client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(chunk.to_vec()))
                .send()
        });
        for out in futures::future::join_all(calls).await {
            let out = out?;
            anyhow::ensure!(out.failed.is_empty(), "raw send refused {:?}", out.failed);
        }
        Ok(())
    }

    async fn receive_ack(&mut self, max: u64) -> anyhow::Result<u64> {
        let got = self.receive(max).await?;
        if got.is_empty() {
            return Ok(0);
        }
        let n = got.len() as u64;
        self.delete(got.into_iter().map(|(_, r)| r).collect())
            .await?;
        Ok(n)
    }

    async fn idle(&mut self) {
        tokio::time::sleep(IDLE).await;
    }
}
