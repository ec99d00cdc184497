//! Latency of the 4-step linear workflow (request -> 4 steps -> finalized), one task at a time
//! so the figure is the pipeline's, not queueing's. Prints p50/p99; see docs/benchmarks.md.
//!
//!   cargo bench -p tasker-orchestration --bench workflow_latency
//!
//! `TASKS` (default 1000) and `CONCURRENCY` (default 1) override the shape.

use std::sync::Arc;

use tasker_messaging::{InMemoryMessageService, MessagingService};
use tasker_orchestration::workflow::{run_demo, DemoConfig, InMemoryTaskStore};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and expects speed.
    let quick = !std::env::args().any(|a| a == "--bench");
    let tasks = if quick { 50 } else { env_usize("TASKS", 1000) };
    let concurrency = env_usize("CONCURRENCY", 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let messaging: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let store = Arc::new(InMemoryTaskStore::new(messaging.clone()));
        let config = DemoConfig {
            tasks,
            concurrency,
            transient_failure_rate: 0.0,
            permanent_failure_rate: 0.0,
            ..DemoConfig::default()
        };
        let summary = run_demo(messaging, store, config, &|_, _| {})
            .await
            .expect("workflow run");
        println!(
            "workflow_latency provider=in_memory tasks={tasks} concurrency={concurrency} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} tasks_per_sec={:.0}",
            summary.latency_p50_ms, summary.latency_p99_ms, summary.latency_max_ms, summary.tasks_per_sec
        );
    });
}
