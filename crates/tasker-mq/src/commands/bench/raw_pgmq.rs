//! The raw `pgmq` crate (`PGMQueueExt`) doing each bench step, for the ratio column of
//! `tasker-mq bench --provider pgmq`: same database, same payloads (the templates' JSON), a
//! pool of the provider's size, its own queues (`bench_<run>_<step>_raw`, dropped after).
//!
//! | step | the pgmq crate |
//! | --- | --- |
//! | send / send_batch(B) | `send` / `send_batch` |
//! | receive(B) + delete, consume | `read_batch(vt 30 s, B)` + `delete_batch` of the ids; the crate has no stream, so consuming is reading in a loop, sleeping 1 ms when the queue is empty |
//! | latency | a poller doing `read_batch(1)` with a 1 ms sleep when the queue is empty (pgmq's documented pattern; the crate has no notification stream) |

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pgmq::PGMQueueExt;
use sqlx::postgres::PgPoolOptions;
use tasker_messaging::{MessagingConfig, QueueName};

use super::target::{Client, SeenTx, Target, Watch};
use super::{Plan, Step};

/// Lease of every read, in pgmq's whole seconds (as the provider's 30 s lease).
const VT_SECS: i32 = 30;
/// The poller's sleep when the queue is empty (latency step, and draining with several tasks).
const POLL: Duration = Duration::from_millis(1);

pub struct RawPgmq {
    pool: sqlx::PgPool,
}

impl RawPgmq {
    /// A lazily connecting pool to the provider's database, of the provider's size.
    pub fn from_config(config: &MessagingConfig) -> anyhow::Result<Self> {
        let pgmq = config
            .connection
            .pgmq
            .as_ref()
            .context("connection.pgmq.database_url is required for the raw pgmq baseline")?;
        let pool = PgPoolOptions::new()
            .max_connections(pgmq.pool_size)
            .connect_lazy(pgmq.database_url.expose())
            // The URL is the caller's secret: name the setting, not the value.
            .map_err(|e| anyhow::anyhow!("connection.pgmq.database_url: {}", scrub_sqlx(&e)))?;
        Ok(RawPgmq { pool })
    }

    async fn queue(&self) -> Arc<PGMQueueExt> {
        Arc::new(PGMQueueExt::new_with_pool(self.pool.clone()).await)
    }
}

/// sqlx's URL errors quote the URL; keep only the kind of error.
fn scrub_sqlx(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Configuration(_) => "not a valid PostgreSQL URL",
        _ => "cannot be used",
    }
}

/// The templates' payloads as the JSON values a pgmq-crate user sends.
fn values(plan: &Plan) -> anyhow::Result<Arc<Vec<serde_json::Value>>> {
    let values = plan
        .templates
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).context("bench payload is JSON"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(values))
}

impl Target for RawPgmq {
    type Client = PgmqClient;

    fn label(&self) -> String {
        "pgmq crate 0.33".to_owned()
    }

    async fn create_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        Ok(self
            .queue()
            .await
            .create(queue.as_str())
            .await
            .map(|_| ())?)
    }

    async fn delete_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        Ok(self.queue().await.drop_queue(queue.as_str()).await?)
    }

    async fn client(&self, queue: &QueueName, _: Step, plan: &Plan) -> anyhow::Result<PgmqClient> {
        Ok(PgmqClient {
            q: self.queue().await,
            name: queue.to_string(),
            values: values(plan)?,
        })
    }

    async fn watch(&self, queue: &QueueName, _: &Plan) -> anyhow::Result<Watch> {
        let (q, name) = (self.queue().await, queue.to_string());
        let poller = |seen: SeenTx| async move {
            loop {
                let got = match q.read_batch::<serde_json::Value>(&name, VT_SECS, 1).await {
                    Ok(got) => got,
                    Err(e) => {
                        let _ = seen.send(Err(e.into()));
                        break;
                    }
                };
                match got.into_iter().next() {
                    Some(m) => {
                        // pgmq carries no message id of ours: one message is in flight.
                        if seen.send(Ok((None, Instant::now()))).is_err() {
                            break;
                        }
                        let _ = q.delete(&name, m.msg_id).await;
                    }
                    None => tokio::time::sleep(POLL).await,
                }
            }
        };
        Ok(Watch::spawn(poller, async {}))
    }
}

pub struct PgmqClient {
    q: Arc<PGMQueueExt>,
    name: String,
    values: Arc<Vec<serde_json::Value>>,
}

impl Client for PgmqClient {
    type Message = serde_json::Value;

    fn message(&self, i: u64) -> serde_json::Value {
        self.values[(i % self.values.len() as u64) as usize].clone()
    }

    async fn send(&mut self, message: serde_json::Value) -> anyhow::Result<()> {
        self.q.send(&self.name, &message).await?;
        Ok(())
    }

    async fn send_batch(&mut self, messages: Vec<serde_json::Value>) -> anyhow::Result<()> {
        self.q.send_batch(&self.name, &messages).await?;
        Ok(())
    }

    async fn receive_ack(&mut self, max: u64) -> anyhow::Result<u64> {
        let got = self
            .q
            .read_batch::<serde_json::Value>(&self.name, VT_SECS, max as i32)
            .await?;
        if got.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = got.iter().map(|m| m.msg_id).collect();
        self.q.delete_batch(&self.name, &ids).await?;
        Ok(ids.len() as u64)
    }

    async fn idle(&mut self) {
        tokio::time::sleep(POLL).await;
    }
}
