//! The PGMQ provider against the raw `pgmq` crate (`PGMQueueExt`), same operations, same
//! database, same run (see docs/benchmarks-pgmq.md). Needs PostgreSQL at DATABASE_URL
//! (default postgres://postgres:postgres@127.0.0.1:5432/test); installs pgmq's SQL if missing.
//!
//!   cargo bench -p tasker-messaging --features pgmq --bench pgmq
//!
//! Message: the orchestrator's StepMessage (three UUIDs, 159 bytes of JSON).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::StreamExt;
use pgmq::PGMQueueExt;
use tasker_messaging::{
    ConsumerExt, ConsumerOptions, MessagingService, OutgoingMessage, PgmqMessageService,
    PgmqSettings, QueueName, SecretUrl, StepMessage,
};
use tokio::sync::Mutex;

const VT: Duration = Duration::from_secs(30);

struct Setup {
    rt: tokio::runtime::Runtime,
    svc: Arc<PgmqMessageService>,
    raw: PGMQueueExt,
    step: StepMessage,
}

impl Setup {
    fn new() -> Setup {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".into());
        let settings = PgmqSettings::new(SecretUrl::new(url.clone()))
            .with_pool_size(8)
            .with_install_sql(true);
        let svc = rt
            .block_on(PgmqMessageService::connect(settings))
            .expect("PostgreSQL with pgmq (DATABASE_URL)");
        // The raw crate on its own pool of the same size (built by hand: its URL parser wants
        // a password).
        let raw_pool = rt
            .block_on(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .connect(&url),
            )
            .expect("raw pool");
        let raw = rt.block_on(PGMQueueExt::new_with_pool(raw_pool));
        Setup {
            rt,
            svc: Arc::new(svc),
            raw,
            step: StepMessage::random(),
        }
    }

    fn queues(&self, name: &str) -> (QueueName, String) {
        let provider = QueueName::new(format!("bench_{name}_p")).expect("name");
        let raw = format!("bench_{name}_r");
        self.rt.block_on(async {
            let _ = self.svc.delete_queue(&provider).await;
            let _ = self.raw.drop_queue(&raw).await;
            self.svc.create_queue(&provider).await.expect("create");
            self.raw.create(&raw).await.expect("create raw");
        });
        (provider, raw)
    }

    fn message(&self) -> OutgoingMessage {
        OutgoingMessage::json(&self.step).expect("encode")
    }

    fn drop_queues(&self, (provider, raw): &(QueueName, String)) {
        self.rt.block_on(async {
            let _ = self.svc.delete_queue(provider).await;
            let _ = self.raw.drop_queue(raw).await;
        });
    }
}

fn benches(c: &mut Criterion) {
    let s = Setup::new();

    // Send one message: one round trip each.
    let qs = s.queues("send1");
    let mut g = c.benchmark_group("pgmq_send_one");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw_crate", |b| {
        b.to_async(&s.rt)
            .iter(|| async { s.raw.send(&qs.1, &s.step).await.expect("send") })
    });
    g.bench_function("provider", |b| {
        b.to_async(&s.rt)
            .iter(|| async { s.svc.send(&qs.0, s.message()).await.expect("send") })
    });
    g.finish();
    s.drop_queues(&qs);

    // send_batch(100), one task.
    let qs = s.queues("batch");
    let steps = vec![s.step; 100];
    let mut g = c.benchmark_group("pgmq_send_batch100");
    g.throughput(Throughput::Elements(100));
    g.bench_function("raw_crate", |b| {
        b.to_async(&s.rt)
            .iter(|| async { s.raw.send_batch(&qs.1, &steps).await.expect("send") })
    });
    g.bench_function("provider", |b| {
        b.to_async(&s.rt).iter(|| async {
            let batch = (0..100).map(|_| s.message()).collect();
            s.svc.send_batch(&qs.0, batch).await.expect("send")
        })
    });
    g.finish();

    // send_batch(100) from 4 concurrent tasks.
    let mut g = c.benchmark_group("pgmq_send_batch100_x4");
    g.throughput(Throughput::Elements(400));
    g.bench_function("raw_crate", |b| {
        b.to_async(&s.rt).iter(|| async {
            futures::future::join_all((0..4).map(|_| s.raw.send_batch(&qs.1, &steps))).await
        })
    });
    g.bench_function("provider", |b| {
        b.to_async(&s.rt).iter(|| async {
            futures::future::join_all((0..4).map(|_| {
                let batch = (0..100).map(|_| s.message()).collect();
                s.svc.send_batch(&qs.0, batch)
            }))
            .await
        })
    });
    g.finish();
    s.drop_queues(&qs);

    // read(100) + delete by id array; the queue is refilled outside the timed part.
    let qs = s.queues("read");
    let mut g = c.benchmark_group("pgmq_read100_delete");
    g.throughput(Throughput::Elements(100));
    g.bench_function("raw_crate", |b| {
        b.to_async(&s.rt).iter_custom(|iters| {
            let (s, qs, steps) = (&s, &qs, &steps);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    s.raw.send_batch(&qs.1, steps).await.expect("fill");
                    let start = Instant::now();
                    let got = s
                        .raw
                        .read_batch::<StepMessage>(&qs.1, 30, 100)
                        .await
                        .expect("read");
                    let ids: Vec<i64> = got.iter().map(|m| m.msg_id).collect();
                    s.raw.delete_batch(&qs.1, &ids).await.expect("delete");
                    total += start.elapsed();
                    assert_eq!(ids.len(), 100);
                }
                total
            }
        })
    });
    g.bench_function("provider", |b| {
        b.to_async(&s.rt).iter_custom(|iters| {
            let (s, qs) = (&s, &qs);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = (0..100).map(|_| s.message()).collect();
                    s.svc.send_batch(&qs.0, batch).await.expect("fill");
                    let start = Instant::now();
                    let got = s.svc.receive(&qs.0, 100, VT).await.expect("receive");
                    let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
                    let outcome = s
                        .svc
                        .delete_messages(&qs.0, &receipts)
                        .await
                        .expect("delete");
                    total += start.elapsed();
                    assert_eq!(outcome.deleted, 100);
                }
                total
            }
        })
    });
    g.finish();
    s.drop_queues(&qs);

    // Send-to-receive latency: a consumer task is already waiting when the message is sent;
    // measured from the start of send to the consumer holding the message.
    let qs = s.queues("latency");
    let options = ConsumerOptions {
        batch_size: 10,
        visibility_timeout: VT,
        min_idle_backoff: Duration::from_millis(1),
        max_idle_backoff: Duration::from_millis(250),
    };
    let (tx, stream_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let consumer = {
        let (svc, queue) = (s.svc.clone(), qs.0.clone());
        s.rt.spawn(async move {
            let mut stream = svc.consume(&queue, options);
            while let Some(Ok(m)) = stream.next().await {
                if tx.send(Instant::now()).is_err() {
                    break;
                }
                let _ = svc.delete_message(&queue, m.receipt()).await;
            }
        })
    };
    let (tx, poll_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let poller = {
        let (raw_pool, queue) = (s.raw.connection.clone(), qs.1.clone());
        s.rt.spawn(async move {
            let raw = PGMQueueExt::new_with_pool(raw_pool).await;
            loop {
                let Ok(got) = raw.read_batch::<StepMessage>(&queue, 30, 1).await else {
                    break;
                };
                if let Some(m) = got.into_iter().next() {
                    if tx.send(Instant::now()).is_err() {
                        break;
                    }
                    let _ = raw.delete(&queue, m.msg_id).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let stream_rx = Arc::new(Mutex::new(stream_rx));
    let poll_rx = Arc::new(Mutex::new(poll_rx));
    let mut g = c.benchmark_group("pgmq_send_to_receive");
    g.throughput(Throughput::Elements(1));
    g.bench_function("provider_stream_notify", |b| {
        b.to_async(&s.rt).iter_custom(|iters| {
            let (s, qs, rx) = (&s, &qs, stream_rx.clone());
            async move {
                let mut rx = rx.lock().await;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Idle first, as a consumer between bursts is.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let start = Instant::now();
                    s.svc.send(&qs.0, s.message()).await.expect("send");
                    let at = rx.recv().await.expect("consumer");
                    total += at - start;
                }
                total
            }
        })
    });
    g.bench_function("raw_crate_poll_1ms", |b| {
        b.to_async(&s.rt).iter_custom(|iters| {
            let (s, qs, rx) = (&s, &qs, poll_rx.clone());
            async move {
                let mut rx = rx.lock().await;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let start = Instant::now();
                    s.raw.send(&qs.1, &s.step).await.expect("send");
                    let at = rx.recv().await.expect("poller");
                    total += at - start;
                }
                total
            }
        })
    });
    g.finish();
    drop((stream_rx, poll_rx));
    s.drop_queues(&qs);
    s.rt.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(5), consumer).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), poller).await;
    });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6))
}

criterion_group! {
    name = pgmq_benches;
    config = config();
    targets = benches
}
criterion_main!(pgmq_benches);
