//! In-memory provider micro-benchmarks (see docs/benchmarks.md).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tasker_messaging::{
    InMemoryMessageService, MessagingService, OutgoingMessage, QueueName, StepMessage,
};

fn send_receive_ack(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let svc = InMemoryMessageService::default();
    let q = QueueName::new("bench_queue").expect("valid name");
    rt.block_on(svc.create_queue(&q)).expect("create");
    let payload = OutgoingMessage::json(&StepMessage::random())
        .expect("encode")
        .payload;
    let mut group = c.benchmark_group("in_memory");
    group.throughput(Throughput::Elements(100));
    group.bench_function("send_batch100_receive100_delete100", |b| {
        b.to_async(&rt).iter(|| async {
            let batch = (0..100)
                .map(|_| OutgoingMessage::new(payload.clone()))
                .collect();
            svc.send_batch(&q, batch).await.expect("send");
            let got = svc
                .receive(&q, 100, Duration::from_secs(30))
                .await
                .expect("receive");
            let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
            svc.delete_messages(&q, &receipts).await.expect("delete");
        })
    });
    group.finish();
}

criterion_group!(benches, send_receive_ack);
criterion_main!(benches);
