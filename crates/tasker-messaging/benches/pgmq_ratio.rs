//! Provider against the raw `pgmq` crate, interleaved: every round runs the same operation
//! with both (alternating which goes first), so load from other processes on a shared machine
//! hits both alike and the ratio stays meaningful. Prints msg/s, p50/p99 per operation and
//! the provider/raw ratio. The criterion bench `pgmq` measures the same operations one after
//! the other.
//!
//!   cargo bench -p tasker-messaging --features pgmq --bench pgmq_ratio [-- ROUNDS]
//!
//! `PGMQ_RATIO_STEPS=send_one,send_batch,headers,read_delete,latency` runs only those steps.
//!
//! DATABASE_URL as for the tests. StepMessage payloads (three UUIDs, 159 bytes of JSON).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use pgmq::PGMQueueExt;
use tasker_messaging::{
    ConsumerExt, ConsumerOptions, MessagingService, OutgoingMessage, PgmqMessageService,
    PgmqSettings, QueueName, SecretUrl, StepMessage,
};

const VT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Side {
    hist: Option<Histogram<u64>>,
    messages: u64,
    busy: Duration,
}

impl Side {
    fn record(&mut self, took: Duration, messages: u64) {
        let hist = self
            .hist
            .get_or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("hist"));
        let _ = hist.record(took.as_micros().max(1) as u64);
        self.messages += messages;
        self.busy += took;
    }
    fn rate(&self) -> f64 {
        self.messages as f64 / self.busy.as_secs_f64().max(1e-9)
    }
    fn p(&self, q: f64) -> f64 {
        self.hist
            .as_ref()
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
    }
}

/// A pause between an untimed fill and the timed step, so what the fill set off (the
/// provider's wakeup notification reaching its listener when the queue was empty) is not
/// billed to the step. Taken by both sides.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

fn report(name: &str, raw: &Side, provider: &Side) {
    println!(
        "{name:<34} raw {:>9.0} msg/s p50 {:>6.2} ms p99 {:>6.2} ms | provider {:>9.0} msg/s p50 {:>6.2} ms p99 {:>6.2} ms | ratio {:.2}",
        raw.rate(),
        raw.p(0.5),
        raw.p(0.99),
        provider.rate(),
        provider.p(0.5),
        provider.p(0.99),
        provider.rate() / raw.rate()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20);
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".into());
    let settings = PgmqSettings::new(SecretUrl::new(url.clone()))
        .with_pool_size(8)
        .with_install_sql(true);
    let svc = Arc::new(
        PgmqMessageService::connect(settings)
            .await
            .expect("PostgreSQL"),
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .expect("raw pool");
    let raw = Arc::new(PGMQueueExt::new_with_pool(pool).await);
    let step = StepMessage::random();
    let steps = vec![step; 100];
    let message = || OutgoingMessage::json(&step).expect("encode");
    let qp = QueueName::new("bench_ratio_p").expect("name");
    let qr = "bench_ratio_r";
    let reset = || async {
        let _ = svc.delete_queue(&qp).await;
        let _ = raw.drop_queue(qr).await;
        svc.create_queue(&qp).await.expect("create");
        raw.create(qr).await.expect("create raw");
    };
    // PGMQ_RATIO_STEPS=send_one,send_batch,headers,read_delete,latency picks steps (all by default).
    let only = std::env::var("PGMQ_RATIO_STEPS").unwrap_or_default();
    let want = |step: &str| only.is_empty() || only.split(',').any(|s| s.trim() == step);
    println!("pgmq provider vs raw pgmq crate, {rounds} interleaved rounds");

    if want("send_one") {
        // send one, 200 per round and side.
        reset().await;
        let (mut r, mut p) = (Side::default(), Side::default());
        for round in 0..rounds {
            for side in [round % 2, 1 - round % 2] {
                for _ in 0..200 {
                    let t = Instant::now();
                    if side == 0 {
                        raw.send(qr, &step).await.expect("send");
                        r.record(t.elapsed(), 1);
                    } else {
                        svc.send(&qp, message()).await.expect("send");
                        p.record(t.elapsed(), 1);
                    }
                }
            }
        }
        report("send one (1 task)", &r, &p);
    }
    if want("send_batch") {
        // send_batch(100), 1 task and 4 tasks, 20 batches per round and side.
        for tasks in [1usize, 4] {
            reset().await;
            let (mut r, mut p) = (Side::default(), Side::default());
            for round in 0..rounds {
                for side in [round % 2, 1 - round % 2] {
                    let t = Instant::now();
                    let mut handles = Vec::new();
                    for _ in 0..tasks {
                        let (svc, raw, steps, qp) =
                            (svc.clone(), raw.clone(), steps.clone(), qp.clone());
                        handles.push(tokio::spawn(async move {
                            let mut lat = Vec::new();
                            for _ in 0..20 {
                                let t = Instant::now();
                                if side == 0 {
                                    raw.send_batch(qr, &steps).await.expect("send");
                                } else {
                                    let batch = (0..100)
                                        .map(|_| OutgoingMessage::json(&steps[0]).expect("encode"))
                                        .collect();
                                    svc.send_batch(&qp, batch).await.expect("send");
                                }
                                lat.push(t.elapsed());
                            }
                            lat
                        }));
                    }
                    let mut lats = Vec::new();
                    for h in handles {
                        lats.extend(h.await.expect("task"));
                    }
                    let wall = t.elapsed();
                    let side_stats = if side == 0 { &mut r } else { &mut p };
                    // Throughput from wall time over all tasks; latency per batch.
                    for l in &lats {
                        let _ = side_stats
                            .hist
                            .get_or_insert_with(|| {
                                Histogram::new_with_bounds(1, 60_000_000, 3).expect("hist")
                            })
                            .record(l.as_micros().max(1) as u64);
                    }
                    side_stats.messages += (lats.len() * 100) as u64;
                    side_stats.busy += wall;
                }
            }
            report(&format!("send_batch(100) x {tasks} task(s)"), &r, &p);
        }
    }
    if want("headers") {
        // The same send_batch with the raw crate carrying the same metadata (message id and
        // correlation id as pgmq headers), for what the ids alone cost.
        reset().await;
        let (mut r, mut p) = (Side::default(), Side::default());
        let headers: Vec<serde_json::Value> = steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "tasker_message_id": uuid::Uuid::now_v7(),
                    "tasker_correlation_id": s.correlation_id,
                })
            })
            .collect();
        for round in 0..rounds {
            for side in [round % 2, 1 - round % 2] {
                for _ in 0..20 {
                    let t = Instant::now();
                    if side == 0 {
                        raw.send_batch_with_delay_with_headers(qr, &steps, Some(&headers), 0)
                            .await
                            .expect("send");
                        r.record(t.elapsed(), 100);
                    } else {
                        let batch = (0..100).map(|_| message()).collect();
                        svc.send_batch(&qp, batch).await.expect("send");
                        p.record(t.elapsed(), 100);
                    }
                }
            }
        }
        report("send_batch(100), raw with id headers", &r, &p);
    }
    if want("read_delete") {
        // read(100) + delete by id array; refilled untimed.
        reset().await;
        let (mut r, mut p) = (Side::default(), Side::default());
        // The two halves timed apart too, to see which one a gap comes from.
        let (mut r_read, mut p_read) = (Side::default(), Side::default());
        let (mut r_del, mut p_del) = (Side::default(), Side::default());
        for round in 0..rounds {
            for side in [round % 2, 1 - round % 2] {
                for _ in 0..10 {
                    if side == 0 {
                        raw.send_batch(qr, &steps).await.expect("fill");
                        settle().await;
                        let t = Instant::now();
                        let got = raw
                            .read_batch::<StepMessage>(qr, 30, 100)
                            .await
                            .expect("read");
                        let read = t.elapsed();
                        let ids: Vec<i64> = got.iter().map(|m| m.msg_id).collect();
                        raw.delete_batch(qr, &ids).await.expect("delete");
                        let all = t.elapsed();
                        r.record(all, ids.len() as u64);
                        r_read.record(read, ids.len() as u64);
                        r_del.record(all - read, ids.len() as u64);
                    } else {
                        let batch = (0..100).map(|_| message()).collect();
                        svc.send_batch(&qp, batch).await.expect("fill");
                        settle().await;
                        let t = Instant::now();
                        let got = svc.receive(&qp, 100, VT).await.expect("receive");
                        let read = t.elapsed();
                        let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
                        let outcome = svc.delete_messages(&qp, &receipts).await.expect("delete");
                        let all = t.elapsed();
                        p.record(all, outcome.deleted as u64);
                        p_read.record(read, got.len() as u64);
                        p_del.record(all - read, outcome.deleted as u64);
                    }
                }
            }
        }
        report("read(100) + delete(ids)", &r, &p);
        report("  of which read(100)", &r_read, &p_read);
        report("  of which delete(ids)", &r_del, &p_del);
    }
    if want("latency") {
        // Send-to-receive latency: a consumer task is already waiting when the message is sent
        // (5 ms idle before each send); the time is from the start of send to the consumer
        // holding the message. Raw: a poller reading every 1 ms. Provider: the consumer stream
        // (waits on notifications), and a poller like raw's for reference.
        reset().await;
        let (mut r, mut p, mut pp) = (Side::default(), Side::default(), Side::default());
        let raw_rx = {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let raw = raw.clone();
            tokio::spawn(async move {
                loop {
                    let Ok(got) = raw.read_batch::<StepMessage>(qr, 30, 1).await else {
                        break;
                    };
                    if let Some(m) = got.into_iter().next() {
                        if tx.send(Instant::now()).is_err() {
                            break;
                        }
                        let _ = raw.delete(qr, m.msg_id).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            });
            rx
        };
        let stream_rx = {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let (svc, qp) = (svc.clone(), qp.clone());
            let options = ConsumerOptions {
                batch_size: 10,
                visibility_timeout: VT,
                min_idle_backoff: Duration::from_millis(1),
                max_idle_backoff: Duration::from_millis(250),
            };
            tokio::spawn(async move {
                let mut stream = svc.consume(&qp, options);
                // Ends when the queue is deleted at the end (a permanent error ends the stream).
                while let Some(Ok(m)) = stream.next().await {
                    if tx.send(Instant::now()).is_err() {
                        break;
                    }
                    let _ = svc.delete_message(&qp, m.receipt()).await;
                }
            });
            rx
        };
        let (mut raw_rx, mut stream_rx) = (raw_rx, stream_rx);
        for _ in 0..rounds {
            for _ in 0..25 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let t = Instant::now();
                raw.send(qr, &step).await.expect("send");
                let at = raw_rx.recv().await.expect("raw consumer");
                r.record(at - t, 1);

                tokio::time::sleep(Duration::from_millis(5)).await;
                let t = Instant::now();
                svc.send(&qp, message()).await.expect("send");
                let at = stream_rx.recv().await.expect("stream consumer");
                p.record(at - t, 1);
            }
        }
        drop(stream_rx);
        let qp2 = QueueName::new("bench_ratio_p2").expect("name");
        let _ = svc.delete_queue(&qp2).await;
        svc.create_queue(&qp2).await.expect("create");
        let mut poll_rx = {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            let (svc, qp2) = (svc.clone(), qp2.clone());
            tokio::spawn(async move {
                loop {
                    let Ok(mut got) = svc.receive(&qp2, 1, VT).await else {
                        break;
                    };
                    if let Some(m) = got.pop() {
                        if tx.send(Instant::now()).is_err() {
                            break;
                        }
                        let _ = svc.delete_message(&qp2, m.receipt()).await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            });
            rx
        };
        for _ in 0..rounds {
            for _ in 0..25 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let t = Instant::now();
                svc.send(&qp2, message()).await.expect("send");
                let at = poll_rx.recv().await.expect("poll consumer");
                pp.record(at - t, 1);
            }
        }
        drop(poll_rx);
        drop(raw_rx);
        // The pollers stop at their next message; wake them so they notice.
        raw.send(qr, &step).await.expect("send");
        svc.send(&qp2, message()).await.expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = svc.delete_queue(&qp2).await;
        report("latency: raw poll 1ms | stream+notify", &r, &p);
        report("latency: raw poll 1ms | provider poll", &r, &pp);
    }
    let _ = svc.delete_queue(&qp).await;
    let _ = raw.drop_queue(qr).await;
    svc.shutdown().await.expect("shutdown");
}
