//! Resilience overheads: calls per second while a circuit is open (fast fail) against a real
//! call to the in-memory provider in the same run, the closed-breaker overhead, and the cost
//! of a full breaker round trip (closed -> open -> half-open -> closed).
//!
//! `cargo bench -p tasker-messaging --bench resilience`; criterion prints elements/s, which is
//! calls/s here.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tasker_messaging::resilience::{CircuitBreaker, CircuitBreakerService, CircuitState};
use tasker_messaging::{
    CircuitBreakerConfig, InMemoryMessageService, MessagingService, OutgoingMessage, QueueName,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn breaker(timeout_ms: u64) -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::new(
        "bench",
        CircuitBreakerConfig {
            failure_threshold: 1,
            success_threshold: 2,
            timeout_ms,
            half_open_max_calls: 1,
        },
    ))
}

fn fast_fail(c: &mut Criterion) {
    let rt = runtime();
    let queue = QueueName::new("bench_queue").unwrap();
    let mem: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
    rt.block_on(async {
        mem.create_queue(&queue).await.unwrap();
        mem.send(&queue, OutgoingMessage::new("x")).await.unwrap();
    });
    let open = breaker(u64::MAX / 2);
    open.record_failure();
    assert_eq!(open.state(), CircuitState::Open);
    let open_svc = CircuitBreakerService::new(mem.clone(), open);
    let closed_svc = CircuitBreakerService::new(mem.clone(), breaker(30_000));

    let mut g = c.benchmark_group("breaker");
    g.throughput(Throughput::Elements(1));
    // The cheapest real call: stats of a one-message queue, straight to the provider.
    g.bench_function("raw_in_memory_stats", |b| {
        b.to_async(&rt)
            .iter(|| async { mem.get_queue_stats(&queue).await.unwrap() })
    });
    g.bench_function("closed_breaker_stats", |b| {
        b.to_async(&rt)
            .iter(|| async { closed_svc.get_queue_stats(&queue).await.unwrap() })
    });
    g.bench_function("open_breaker_fast_fail", |b| {
        b.to_async(&rt)
            .iter(|| async { open_svc.get_queue_stats(&queue).await.unwrap_err() })
    });
    g.finish();

    let mut g = c.benchmark_group("breaker_round_trip");
    g.throughput(Throughput::Elements(1));
    // timeout 0: open is followed at once by half-open, so this is the state machine's cost.
    let b0 = breaker(0);
    g.bench_function("closed_open_half_open_closed", |b| {
        b.iter(|| {
            b0.record_failure(); // closed -> open
            b0.try_acquire().unwrap().success(); // -> half-open, 1 of 2
            b0.try_acquire().unwrap().success(); // -> closed
            debug_assert_eq!(b0.state(), CircuitState::Closed);
        })
    });
    g.finish();
}

criterion_group!(benches, fast_fail);
criterion_main!(benches);
