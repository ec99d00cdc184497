//! The raw `pgmq` crate (`PGMQueueExt`) doing each bench step, for the ratio column of
//! `tasker-mq bench --provider pgmq`: same database, same payloads (the templates' JSON), a
//! pool of the provider's size, its own queues (`bench_<run>_raw_<step>`, dropped after).
//!
//! What the crate has no equivalent for is done the way its users would: the latency step
//! polls with one `read` and a 1 ms sleep when the queue is empty (pgmq's documented
//! pattern; the crate has no notification stream).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use hdrhistogram::Histogram;
use pgmq::PGMQueueExt;
use sqlx::postgres::PgPoolOptions;
use tasker_messaging::MessagingConfig;

use super::{
    new_histogram, parallel, record, DrainProgress, LatencyTimer, Measurement, Plan, RawBaseline,
    Step,
};

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

fn pick(values: &[serde_json::Value], i: u64) -> &serde_json::Value {
    &values[(i % values.len() as u64) as usize]
}

/// `k` values starting at `from`, cycling through the templates.
fn batch_of(values: &[serde_json::Value], from: u64, k: u64) -> Vec<serde_json::Value> {
    (from..from + k).map(|i| pick(values, i).clone()).collect()
}

#[async_trait]
impl RawBaseline for RawPgmq {
    fn client(&self) -> String {
        "pgmq crate 0.33".to_owned()
    }

    async fn run(&self, step: Step, plan: &Plan) -> anyhow::Result<Option<Measurement>> {
        let name = format!("{}_raw", plan.queue_for(step)?);
        let q = &Arc::new(PGMQueueExt::new_with_pool(self.pool.clone()).await);
        q.create(&name)
            .await
            .with_context(|| format!("raw pgmq: creating {name}"))?;
        let result = match step {
            Step::Send => send(q, &name, plan).await,
            Step::SendBatch => send_batch(q, &name, plan).await,
            // The crate has no stream: consuming is reading in a loop.
            Step::ReceiveAck | Step::ConsumeAck => receive_ack(q, &name, plan).await,
            Step::SendReceiveAck => send_receive_ack(q, &name, plan).await,
            Step::Latency => latency(q, &name, plan).await,
        };
        let dropped = q
            .drop_queue(&name)
            .await
            .with_context(|| format!("raw pgmq: dropping {name}"));
        let measured = result?;
        dropped?;
        Ok(Some(measured))
    }
}

async fn send(q: &Arc<PGMQueueExt>, name: &str, plan: &Plan) -> anyhow::Result<Measurement> {
    let values = values(plan)?;
    parallel(plan, |task, n| {
        let (q, name, values) = (q.clone(), name.to_owned(), values.clone());
        async move {
            let mut h = new_histogram();
            for i in 0..n {
                let t = Instant::now();
                q.send(&name, pick(&values, task * n + i)).await?;
                record(&mut h, t);
            }
            Ok((n, h))
        }
    })
    .await
}

async fn send_batch(q: &Arc<PGMQueueExt>, name: &str, plan: &Plan) -> anyhow::Result<Measurement> {
    let values = values(plan)?;
    let batch = plan.batch_size;
    parallel(plan, |task, n| {
        let (q, name, values) = (q.clone(), name.to_owned(), values.clone());
        async move {
            let mut h = new_histogram();
            let mut sent = 0;
            while sent < n {
                let k = batch.min(n - sent);
                let messages = batch_of(&values, task * n + sent, k);
                let t = Instant::now();
                q.send_batch(&name, &messages).await?;
                record(&mut h, t);
                sent += k;
            }
            Ok((n, h))
        }
    })
    .await
}

/// Reads and deletes until `acked` reaches `target` (shared by all tasks).
async fn drain(
    q: &PGMQueueExt,
    name: &str,
    batch: u64,
    acked: &AtomicU64,
    target: u64,
    h: &mut Histogram<u64>,
) -> anyhow::Result<u64> {
    let mut progress = DrainProgress::new(acked, target);
    while progress.unfinished() {
        let t = Instant::now();
        let got = q
            .read_batch::<serde_json::Value>(name, VT_SECS, batch as i32)
            .await?;
        if got.is_empty() {
            progress.idle("raw pgmq read")?;
            tokio::time::sleep(POLL).await;
            continue;
        }
        let ids: Vec<i64> = got.iter().map(|m| m.msg_id).collect();
        q.delete_batch(name, &ids).await?;
        progress.acked(ids.len() as u64, h, t);
    }
    Ok(progress.mine)
}

async fn receive_ack(q: &Arc<PGMQueueExt>, name: &str, plan: &Plan) -> anyhow::Result<Measurement> {
    let values = values(plan)?;
    let mut filled = 0;
    while filled < plan.messages {
        let k = plan.batch_size.min(plan.messages - filled);
        q.send_batch(name, &batch_of(&values, filled, k))
            .await
            .context("raw pgmq: filling the queue")?;
        filled += k;
    }
    let acked = Arc::new(AtomicU64::new(0));
    let (target, batch) = (plan.messages, plan.batch_size);
    parallel(plan, |_, _| {
        let (q, name, acked) = (q.clone(), name.to_owned(), acked.clone());
        async move {
            let mut h = new_histogram();
            let mine = drain(&q, &name, batch, &acked, target, &mut h).await?;
            Ok((mine, h))
        }
    })
    .await
}

async fn send_receive_ack(
    q: &Arc<PGMQueueExt>,
    name: &str,
    plan: &Plan,
) -> anyhow::Result<Measurement> {
    let values = values(plan)?;
    let acked = Arc::new(AtomicU64::new(0));
    let (target, batch) = (plan.messages, plan.batch_size);
    parallel(plan, |task, n| {
        let (q, name, values, acked) = (q.clone(), name.to_owned(), values.clone(), acked.clone());
        async move {
            let mut h = new_histogram();
            let (mut sent, mut mine) = (0, 0);
            while sent < n {
                let k = batch.min(n - sent);
                let messages = batch_of(&values, task * n + sent, k);
                let t = Instant::now();
                q.send_batch(&name, &messages).await?;
                let got = q
                    .read_batch::<serde_json::Value>(&name, VT_SECS, batch as i32)
                    .await?;
                let ids: Vec<i64> = got.iter().map(|m| m.msg_id).collect();
                if !ids.is_empty() {
                    q.delete_batch(&name, &ids).await?;
                }
                record(&mut h, t);
                sent += k;
                mine += ids.len() as u64;
                acked.fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
            mine += drain(&q, &name, batch, &acked, target, &mut h).await?;
            Ok((mine, h))
        }
    })
    .await
}

async fn latency(q: &Arc<PGMQueueExt>, name: &str, plan: &Plan) -> anyhow::Result<Measurement> {
    let values = values(plan)?;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let poller = {
        let (q, name) = (q.clone(), name.to_owned());
        tokio::spawn(async move {
            loop {
                let Ok(got) = q.read_batch::<serde_json::Value>(&name, VT_SECS, 1).await else {
                    break;
                };
                match got.into_iter().next() {
                    Some(m) => {
                        if seen_tx.send(Instant::now()).is_err() {
                            break;
                        }
                        let _ = q.delete(&name, m.msg_id).await;
                    }
                    None => tokio::time::sleep(POLL).await,
                }
            }
        })
    };
    let result = async {
        let mut timer = LatencyTimer::new(plan);
        for i in 0..timer.round_trips() {
            timer.begin(i);
            let start = Instant::now();
            q.send(name, pick(&values, i)).await?;
            let seen = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
                .await
                .map_err(|_| anyhow::anyhow!("raw pgmq: message not read within 10 s"))?
                .context("raw pgmq poller stopped")?;
            timer.record(i, start, seen);
        }
        Ok(timer.finish())
    }
    .await;
    poller.abort();
    let _ = poller.await;
    result
}
