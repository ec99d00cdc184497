//! Raw redis-rs doing each `tasker-mq bench` step with no abstraction, for the ratio column of
//! `--provider redis`: the same server (a standalone URL; no baseline for a cluster URL), one
//! multiplexed connection per task, a Redis stream per queue (`bench:{<queue>_raw}`, deleted
//! afterwards) with a consumer group, the same payloads, the message and correlation ids as
//! stream fields. This is what Redis-streams queue libraries do, without leases that end,
//! fencing, delays or dead letters.
//!
//! | step | raw redis-rs |
//! | --- | --- |
//! | send | `XADD` one at a time |
//! | send_batch(B) | B `XADD`s in one pipeline |
//! | receive(B) + delete | `XREADGROUP COUNT B` (non-blocking), then `XACK` + `XDEL` of the ids in one pipeline |
//! | consume + ack | the same in a loop |
//! | send_batch + receive + delete | the two above, in turn, per task |
//! | latency | `XADD`; time until a consumer blocked in `XREADGROUP BLOCK` on its own connection has it |
//!
//! An empty read waits with `XREADGROUP BLOCK 5` (the client's own wait), never a spin.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Value};
use tasker_messaging::{MessageId, MessagingConfig, OutgoingMessage, QueueName};

use super::target::{Client, SeenTx, Target, Watch};
use super::{fresh, Plan, Step};

const GROUP: &str = "bench";

pub struct RawRedis {
    client: redis::Client,
}

impl RawRedis {
    /// The provider's server, when the URL names one server; `None` for a cluster URL.
    pub fn from_config(config: &MessagingConfig) -> anyhow::Result<Option<Self>> {
        let redis = config
            .connection
            .redis
            .as_ref()
            .context("connection.redis.url is required for the raw redis baseline")?;
        let url = redis.url.expose();
        if url.contains("+cluster") || url.contains(',') {
            return Ok(None);
        }
        // The URL is the caller's secret: name the setting, not the value.
        let client = redis::Client::open(url)
            .map_err(|_| anyhow::anyhow!("connection.redis.url is not a valid Redis URL"))?;
        Ok(Some(RawRedis { client }))
    }

    async fn conn(&self, blocking: bool) -> anyhow::Result<MultiplexedConnection> {
        // Blocking reads need the reply timeout off (redis-rs defaults to 500 ms).
        let config = AsyncConnectionConfig::new().set_response_timeout(if blocking {
            None
        } else {
            Some(std::time::Duration::from_secs(10))
        });
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }
}

fn key(queue: &QueueName) -> String {
    format!("bench:{{{queue}}}")
}

impl Target for RawRedis {
    type Client = RedisClient;

    fn label(&self) -> String {
        "redis-rs 1.8 streams".to_owned()
    }

    async fn create_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        let mut conn = self.conn(false).await?;
        let _: () = conn.xgroup_create_mkstream(key(queue), GROUP, "$").await?;
        Ok(())
    }

    async fn delete_queue(&self, queue: &QueueName) -> anyhow::Result<()> {
        let mut conn = self.conn(false).await?;
        let _: () = conn.del(key(queue)).await?;
        Ok(())
    }

    async fn client(
        &self,
        queue: &QueueName,
        step: Step,
        plan: &Plan,
    ) -> anyhow::Result<RedisClient> {
        Ok(RedisClient {
            conn: self.conn(true).await?,
            key: key(queue),
            consumer: format!("{step:?}-{}", fastrand_id()),
            templates: plan.templates.clone(),
        })
    }

    async fn watch(&self, queue: &QueueName, _: &Plan) -> anyhow::Result<Watch> {
        let mut conn = self.conn(true).await?;
        let key = key(queue);
        let reader = |seen: SeenTx| async move {
            let opts = StreamReadOptions::default()
                .group(GROUP, "watch")
                .count(1)
                .block(0);
            loop {
                let reply: StreamReadReply = match conn.xread_options(&[&key], &[">"], &opts).await
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = seen.send(Err(e.into()));
                        break;
                    }
                };
                let at = Instant::now();
                for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                    let id = match entry.map.get("id") {
                        Some(Value::BulkString(b)) => std::str::from_utf8(b)
                            .ok()
                            .and_then(|s| s.parse::<MessageId>().ok()),
                        _ => None,
                    };
                    let _ = seen.send(Ok((id, at)));
                    let _: redis::RedisResult<()> = redis::pipe()
                        .xack(&key, GROUP, &[&entry.id])
                        .xdel(&key, &[&entry.id])
                        .query_async(&mut conn)
                        .await;
                }
            }
        };
        Ok(Watch::spawn(reader, async {}))
    }
}

/// A short unique suffix for consumer names.
fn fastrand_id() -> u32 {
    rand::random()
}

pub struct RedisClient {
    conn: MultiplexedConnection,
    key: String,
    consumer: String,
    templates: Arc<Vec<OutgoingMessage>>,
}

impl RedisClient {
    fn xadd(pipe: &mut redis::Pipeline, key: &str, m: &OutgoingMessage) {
        let mut id = [0u8; 36];
        let mut cid = [0u8; 36];
        let cmd = pipe
            .cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("id")
            .arg(&*m.message_id.0.hyphenated().encode_lower(&mut id));
        if let Some(c) = m.correlation_id {
            cmd.arg("cid")
                .arg(&*c.0.hyphenated().encode_lower(&mut cid));
        }
        cmd.arg("body").arg(&m.payload[..]);
    }

    async fn read(&mut self, max: u64, block_ms: Option<usize>) -> anyhow::Result<u64> {
        let mut opts = StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(max as usize);
        if let Some(ms) = block_ms {
            opts = opts.block(ms);
        }
        let reply: Option<StreamReadReply> =
            self.conn.xread_options(&[&self.key], &[">"], &opts).await?;
        let ids: Vec<String> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .map(|e| e.id)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let _: () = redis::pipe()
            .xack(&self.key, GROUP, &ids)
            .ignore()
            .xdel(&self.key, &ids)
            .ignore()
            .query_async(&mut self.conn)
            .await?;
        Ok(ids.len() as u64)
    }
}

impl Client for RedisClient {
    type Message = OutgoingMessage;

    fn message(&self, i: u64) -> OutgoingMessage {
        fresh(&self.templates, i)
    }

    fn message_id(message: &OutgoingMessage) -> Option<MessageId> {
        Some(message.message_id)
    }

    async fn send(&mut self, message: OutgoingMessage) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        Self::xadd(&mut pipe, &self.key, &message);
        let _: () = pipe.query_async(&mut self.conn).await?;
        Ok(())
    }

    async fn send_batch(&mut self, messages: Vec<OutgoingMessage>) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for m in &messages {
            Self::xadd(&mut pipe, &self.key, m);
            pipe.ignore();
        }
        let _: () = pipe.query_async(&mut self.conn).await?;
        Ok(())
    }

    async fn receive_ack(&mut self, max: u64) -> anyhow::Result<u64> {
        self.read(max, None).await
    }

    async fn idle(&mut self) {
        let _ = self.read(1, Some(5)).await;
    }
}
