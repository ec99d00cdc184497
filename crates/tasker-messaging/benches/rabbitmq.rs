//! The RabbitMQ provider against raw lapin doing the same work in the same run, on the same
//! quorum queues of the machine's broker (see docs/benchmarks.md ("RabbitMQ")).
//!
//!   cargo bench -p tasker-messaging --features rabbitmq --bench rabbitmq
//!
//! * publish: persistent, confirmed, window 500 (provider: `send_batch` of 500).
//! * consume+ack: push consumer, prefetch 500, acks every 50 (provider: its stream and
//!   `delete_messages` of 50; raw: one `multiple` ack per 50).
//! * pull: 100 at a time (provider: `receive(100)` + `delete_messages`; raw: 100 pipelined
//!   `basic.get` + one `multiple` ack).
//! * latency: publish to delivery through the push consumer, p50 / p99 printed after the
//!   criterion groups (1,000 messages each).
//! * `TASKER_BENCH_PROFILE=raw|provider`: only three consume + ack rounds on one side, to count
//!   the client's instructions under callgrind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tasker_messaging::{
    ConsumerExt, ConsumerOptions, MessagingService, OutgoingMessage, QueueName,
    RabbitMqMessageService, RabbitMqSettings, StepMessage,
};
use tokio::runtime::Runtime;

const WINDOW: usize = 500;
const CONSUME: usize = 2_000;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

struct Setup {
    rt: Runtime,
    svc: Arc<RabbitMqMessageService>,
    raw: Connection,
    /// Prefills queues and purges them.
    raw_pub: Channel,
    /// Only the measured window-500 publishes, like the provider's publisher channels: lapin
    /// keeps a channel's pending confirms in a map that never shrinks and scans it on every
    /// `multiple` confirm, so the prefill channel (2,000 pending) is not the same work.
    raw_window: Channel,
    queue: QueueName,
    payload: bytes::Bytes,
}

fn setup() -> Setup {
    let rt = Runtime::new().expect("runtime");
    let (svc, raw, raw_pub, raw_window, queue) = rt.block_on(async {
        let svc = RabbitMqMessageService::new(RabbitMqSettings::new(url())).expect("settings");
        svc.initialize()
            .await
            .expect("RabbitMQ must be reachable (scripts/services/rabbitmq.sh)");
        let queue = QueueName::new(format!(
            "bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        ))
        .expect("name");
        svc.create_queue(&queue).await.expect("create");
        let raw = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .expect("raw connect");
        let raw_pub = raw.create_channel().await.expect("channel");
        raw_pub
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let raw_window = raw.create_channel().await.expect("channel");
        raw_window
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        (Arc::new(svc), raw, raw_pub, raw_window, queue)
    });
    let payload = OutgoingMessage::json(&StepMessage::random())
        .expect("encode")
        .payload;
    Setup {
        rt,
        svc,
        raw,
        raw_pub,
        raw_window,
        queue,
        payload,
    }
}

fn raw_props() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(uuid::Uuid::now_v7().to_string().into())
}

/// Raw lapin: publish `n`, then await every confirm.
async fn raw_publish(ch: &Channel, queue: &str, payload: &[u8], n: usize) {
    let mut confirms = Vec::with_capacity(n);
    for _ in 0..n {
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                payload,
                raw_props(),
            )
            .await
            .expect("publish"),
        );
    }
    for c in futures::future::join_all(confirms).await {
        assert!(c.expect("confirm").is_ack());
    }
}

async fn purge(ch: &Channel, queue: &str) {
    ch.queue_purge(queue.into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
}

fn publish(c: &mut Criterion, s: &Setup) {
    let q = s.queue.as_str();
    let mut group = c.benchmark_group("rabbitmq_publish_confirmed_window500");
    group.throughput(Throughput::Elements(WINDOW as u64));
    group.sample_size(20);
    group.bench_function("raw_lapin", |b| {
        b.to_async(&s.rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                raw_publish(&s.raw_window, q, &s.payload, WINDOW).await;
                total += start.elapsed();
                purge(&s.raw_pub, q).await;
            }
            total
        })
    });
    group.bench_function("provider_send_batch", |b| {
        b.to_async(&s.rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batch = (0..WINDOW)
                    .map(|_| OutgoingMessage::new(s.payload.clone()))
                    .collect();
                let start = Instant::now();
                s.svc.send_batch(&s.queue, batch).await.expect("send");
                total += start.elapsed();
                purge(&s.raw_pub, q).await;
            }
            total
        })
    });
    group.finish();
}

/// Raw lapin: a new channel with prefetch 500, subscribed to the bench queue as `tag`.
async fn raw_subscribe(s: &Setup, tag: &str) -> (Channel, lapin::Consumer) {
    let ch = s.raw.create_channel().await.expect("channel");
    ch.basic_qos(500, BasicQosOptions::default())
        .await
        .expect("qos");
    let consumer = ch
        .basic_consume(
            s.queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (ch, consumer)
}

/// Raw lapin: consume the `CONSUME` messages waiting in the queue with prefetch 500 and one
/// `multiple` ack per 50. Timed from the channel open, as the provider's stream opens its own.
async fn raw_consume_ack(s: &Setup) -> Duration {
    let start = Instant::now();
    let (ch, mut consumer) = raw_subscribe(s, "raw-bench").await;
    for i in 1..=CONSUME {
        let d = consumer.next().await.expect("open").expect("delivery");
        if i % 50 == 0 {
            ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                .await
                .expect("ack");
        }
    }
    let took = start.elapsed();
    ch.basic_cancel("raw-bench".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    let _ = ch.close(200, "done".into()).await;
    took
}

/// The provider: the same messages through its push stream (prefetch 500, every delivery a
/// lease with a 60 s visibility timeout) and `delete_messages` of 50.
async fn provider_consume_ack(s: &Setup) -> Duration {
    let options = ConsumerOptions {
        batch_size: 500,
        visibility_timeout: Duration::from_secs(60),
        ..ConsumerOptions::default()
    };
    let start = Instant::now();
    let mut stream = s.svc.consume(&s.queue, options);
    let mut receipts = Vec::with_capacity(50);
    for _ in 0..CONSUME {
        let m = stream.next().await.expect("open").expect("message");
        receipts.push(m.metadata.receipt_handle);
        if receipts.len() == 50 {
            s.svc
                .delete_messages(&s.queue, &receipts)
                .await
                .expect("delete");
            receipts.clear();
        }
    }
    start.elapsed()
}

fn consume(c: &mut Criterion, s: &Setup) {
    let q = s.queue.as_str();
    let mut group = c.benchmark_group("rabbitmq_consume_ack_prefetch500_ack50");
    group.throughput(Throughput::Elements(CONSUME as u64));
    group.sample_size(10);
    group.bench_function("raw_lapin", |b| {
        b.to_async(&s.rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                raw_publish(&s.raw_pub, q, &s.payload, CONSUME).await;
                total += raw_consume_ack(s).await;
            }
            total
        })
    });
    group.bench_function("provider_stream_delete50", |b| {
        b.to_async(&s.rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                raw_publish(&s.raw_pub, q, &s.payload, CONSUME).await;
                total += provider_consume_ack(s).await;
            }
            total
        })
    });
    group.finish();
}

/// `TASKER_BENCH_PROFILE=provider|raw`: only three rounds of consume + ack on that side, for
/// an instruction count of the client under `valgrind --tool=callgrind` (docs/benchmarks.md).
fn profile_consume(s: &Setup, side: &str) {
    let q = s.queue.as_str();
    let mut took = Duration::ZERO;
    s.rt.block_on(async {
        for _ in 0..3 {
            raw_publish(&s.raw_pub, q, &s.payload, CONSUME).await;
            took += match side {
                "raw" => raw_consume_ack(s).await,
                _ => provider_consume_ack(s).await,
            };
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    println!(
        "rabbitmq_profile_consume/{side}: {:.1}k msg/s over 3 rounds of {CONSUME}",
        (3 * CONSUME) as f64 / took.as_secs_f64() / 1000.0
    );
}

fn pull(c: &mut Criterion, s: &Setup) {
    let q = s.queue.as_str();
    let mut group = c.benchmark_group("rabbitmq_pull100_ack");
    group.throughput(Throughput::Elements(CONSUME as u64));
    group.sample_size(10);
    group.bench_function("raw_lapin_pipelined_get", |b| {
        b.to_async(&s.rt).iter_custom(|iters| async move {
            let ch = s.raw.create_channel().await.expect("channel");
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                raw_publish(&s.raw_pub, q, &s.payload, CONSUME).await;
                let start = Instant::now();
                for _ in 0..CONSUME / 100 {
                    let gets =
                        (0..100).map(|_| ch.basic_get(q.into(), BasicGetOptions { no_ack: false }));
                    let got = futures::future::join_all(gets).await;
                    let last = got
                        .into_iter()
                        .filter_map(|r| r.expect("get"))
                        .map(|m| m.delivery.delivery_tag)
                        .max()
                        .expect("messages");
                    ch.basic_ack(last, BasicAckOptions { multiple: true })
                        .await
                        .expect("ack");
                }
                total += start.elapsed();
            }
            total
        })
    });
    group.bench_function("provider_receive100_delete", |b| {
        b.to_async(&s.rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                raw_publish(&s.raw_pub, q, &s.payload, CONSUME).await;
                let start = Instant::now();
                let mut n = 0;
                while n < CONSUME {
                    let got = s
                        .svc
                        .receive(&s.queue, 100, Duration::from_secs(60))
                        .await
                        .expect("receive");
                    let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
                    s.svc
                        .delete_messages(&s.queue, &receipts)
                        .await
                        .expect("delete");
                    n += got.len();
                }
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

/// Publish-to-delivery latency through a push consumer, 1,000 messages one at a time.
fn latency(s: &Setup) {
    const N: usize = 1_000;
    let q = s.queue.as_str();
    let (raw, provider) = s.rt.block_on(async {
        purge(&s.raw_pub, q).await;
        // Raw: publish (confirm awaited elsewhere), time until the consumer has it.
        let (ch, mut consumer) = raw_subscribe(s, "raw-latency").await;
        let mut raw = Histogram::<u64>::new(3).expect("histogram");
        for _ in 0..N {
            let start = Instant::now();
            let confirm = s
                .raw_pub
                .basic_publish(
                    "".into(),
                    q.into(),
                    BasicPublishOptions::default(),
                    &s.payload,
                    raw_props(),
                )
                .await
                .expect("publish");
            let d = consumer.next().await.expect("open").expect("delivery");
            raw.record(start.elapsed().as_micros() as u64)
                .expect("record");
            ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
                .await
                .expect("ack");
            confirm.await.expect("confirm");
        }
        ch.basic_cancel("raw-latency".into(), BasicCancelOptions::default())
            .await
            .expect("cancel");
        drop(consumer);
        let _ = ch.close(200, "done".into()).await;

        // Provider: send (returns after the confirm) raced with the stream's next item.
        let mut stream = s.svc.consume(&s.queue, ConsumerOptions::default());
        let mut provider = Histogram::<u64>::new(3).expect("histogram");
        for _ in 0..N {
            let start = Instant::now();
            let send = s
                .svc
                .send(&s.queue, OutgoingMessage::new(s.payload.clone()));
            let next = async {
                let m = stream.next().await.expect("open").expect("message");
                provider
                    .record(start.elapsed().as_micros() as u64)
                    .expect("record");
                m
            };
            let (sent, m) = tokio::join!(send, next);
            sent.expect("send");
            s.svc
                .delete_message(&s.queue, m.receipt())
                .await
                .expect("delete");
        }
        (raw, provider)
    });
    for (name, h) in [("raw_lapin", &raw), ("provider_stream", &provider)] {
        println!(
            "rabbitmq_push_latency/{name}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} messages)",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
            h.len()
        );
    }
}

/// Raw and provider alternate round by round (the order flips each round), so background
/// load on a shared machine hits both alike; prints medians and the median per-round ratio.
fn interleaved(s: &Setup) {
    const ROUNDS: usize = 25;
    let q = s.queue.as_str();
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (publish, consume) = s.rt.block_on(async {
        purge(&s.raw_pub, q).await;
        let mut publish = (Vec::new(), Vec::new());
        let mut consume = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            for provider_turn in [round % 2 == 0, round % 2 != 0] {
                // Confirmed publish, window 500, four windows per measurement.
                let start = Instant::now();
                for _ in 0..4 {
                    if provider_turn {
                        let batch = (0..WINDOW)
                            .map(|_| OutgoingMessage::new(s.payload.clone()))
                            .collect();
                        s.svc.send_batch(&s.queue, batch).await.expect("send");
                    } else {
                        raw_publish(&s.raw_window, q, &s.payload, WINDOW).await;
                    }
                }
                let rate = (4 * WINDOW) as f64 / start.elapsed().as_secs_f64();
                if provider_turn {
                    publish.1.push(rate)
                } else {
                    publish.0.push(rate)
                }
                purge(&s.raw_pub, q).await;

                // Consume + ack every 50, prefetch 500, from a prefilled queue.
                raw_publish(&s.raw_pub, q, &s.payload, CONSUME).await;
                let took = if provider_turn {
                    provider_consume_ack(s).await
                } else {
                    raw_consume_ack(s).await
                };
                let rate = CONSUME as f64 / took.as_secs_f64();
                if provider_turn {
                    consume.1.push(rate)
                } else {
                    consume.0.push(rate)
                }
                // Let the dropped consumer's cancel land before the next prefill.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        (publish, consume)
    });
    for (name, (raw, provider)) in [
        ("publish_confirmed_window500", publish),
        ("consume_ack_prefetch500_ack50", consume),
    ] {
        let ratios: Vec<f64> = raw.iter().zip(&provider).map(|(r, p)| p / r).collect();
        println!(
            "rabbitmq_ab/{name}: raw median {:.1}k msg/s, provider median {:.1}k msg/s, \
             median per-round ratio {:.3} ({ROUNDS} rounds)",
            median(raw.clone()) / 1000.0,
            median(provider.clone()) / 1000.0,
            median(ratios)
        );
    }
}

fn main() {
    let s = setup();
    if let Ok(side) = std::env::var("TASKER_BENCH_PROFILE") {
        profile_consume(&s, &side);
        s.rt.block_on(async {
            let _ = s.svc.delete_queue(&s.queue).await;
        });
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    publish(&mut c, &s);
    consume(&mut c, &s);
    pull(&mut c, &s);
    latency(&s);
    interleaved(&s);
    c.final_summary();
    s.rt.block_on(async {
        let _ = s.svc.delete_queue(&s.queue).await;
    });
}
