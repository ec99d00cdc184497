//! Criterion benchmarks of the in-memory provider's hot path, with the canonical three-UUID
//! step message (see docs/benchmarks.md). Payloads are encoded outside the timed region, so
//! these measure the provider (and message-id generation where noted); `tasker-mq bench`
//! measures the whole producer/consumer loop.
//!
//! Run: `cargo bench -p tasker-messaging --bench in_memory`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tasker_messaging::{
    InMemoryMessageService, MessagingService, OutgoingMessage, QueueName, StepMessage,
};

const BATCH: usize = 100;
const LEASE: Duration = Duration::from_secs(30);

fn step_messages(n: usize) -> Vec<OutgoingMessage> {
    (0..n)
        .map(|_| OutgoingMessage::json(&StepMessage::random()).expect("step messages encode"))
        .collect()
}

/// Receives and acks everything visible, so each iteration starts from the same empty queue.
async fn drain(svc: &InMemoryMessageService, queue: &QueueName) {
    loop {
        let got = svc.receive(queue, BATCH, LEASE).await.expect("receive");
        if got.is_empty() {
            return;
        }
        let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
        svc.delete_messages(queue, &receipts).await.expect("delete");
    }
}

fn setup(rt: &tokio::runtime::Runtime, name: &str) -> (Arc<InMemoryMessageService>, QueueName) {
    let svc = Arc::new(InMemoryMessageService::default());
    let queue = QueueName::new(name).expect("valid bench queue name");
    rt.block_on(svc.create_queue(&queue)).expect("create queue");
    (svc, queue)
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("in_memory");

    group.throughput(Throughput::Elements(BATCH as u64));
    let (svc, queue) = setup(&rt, "bench_send_batch");
    group.bench_function("send_batch_100", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (svc, queue) = (svc.clone(), queue.clone());
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let batch = step_messages(BATCH);
                    let start = Instant::now();
                    black_box(svc.send_batch(&queue, batch).await.expect("send_batch"));
                    timed += start.elapsed();
                    drain(&svc, &queue).await;
                }
                timed
            }
        })
    });

    let (svc, queue) = setup(&rt, "bench_receive_ack");
    group.bench_function("receive_100_delete_messages", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (svc, queue) = (svc.clone(), queue.clone());
            async move {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    svc.send_batch(&queue, step_messages(BATCH))
                        .await
                        .expect("send_batch");
                    let start = Instant::now();
                    let got = svc.receive(&queue, BATCH, LEASE).await.expect("receive");
                    let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
                    let outcome = svc
                        .delete_messages(&queue, &receipts)
                        .await
                        .expect("delete_messages");
                    timed += start.elapsed();
                    assert_eq!(outcome.deleted, BATCH);
                }
                timed
            }
        })
    });

    // The whole life of 100 messages, ids generated inside the timed region as a producer
    // would: the figure the 500k msg/s target is about.
    let (svc, queue) = setup(&rt, "bench_queue");
    let payload = OutgoingMessage::json(&StepMessage::random())
        .expect("encode")
        .payload;
    group.bench_function("send_batch100_receive100_delete100", |b| {
        b.to_async(&rt).iter(|| async {
            let batch = (0..BATCH)
                .map(|_| OutgoingMessage::new(payload.clone()))
                .collect();
            svc.send_batch(&queue, batch).await.expect("send");
            let got = svc.receive(&queue, BATCH, LEASE).await.expect("receive");
            let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
            svc.delete_messages(&queue, &receipts)
                .await
                .expect("delete");
        })
    });

    group.throughput(Throughput::Elements(1));
    let (svc, queue) = setup(&rt, "bench_round_trip");
    let payload = OutgoingMessage::json(&StepMessage::random()).expect("step message encodes");
    group.bench_function("send_receive_ack_one", |b| {
        b.to_async(&rt).iter(|| {
            let (svc, queue) = (svc.clone(), queue.clone());
            let message = OutgoingMessage {
                message_id: tasker_messaging::MessageId::new(),
                ..payload.clone()
            };
            async move {
                svc.send(&queue, message).await.expect("send");
                let got = svc.receive(&queue, 1, LEASE).await.expect("receive");
                svc.delete_message(&queue, got[0].receipt())
                    .await
                    .expect("delete");
            }
        })
    });

    group.finish();
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
