//! Latency of the 4-step linear workflow (request -> 4 steps -> finalized: 12 queue hops), one
//! task at a time so the figure is the pipeline's, not queueing's. Prints p50/p99; see
//! docs/benchmarks.md.
//!
//!   cargo bench -p tasker-orchestration --bench workflow_latency
//!   PROVIDER=pgmq cargo bench -p tasker-orchestration --features pgmq --bench workflow_latency
//!
//! `TASKS` (default 1000) and `CONCURRENCY` (default 1) override the shape; `DATABASE_URL`
//! the database for PGMQ.

use std::sync::Arc;

use tasker_messaging::{InMemoryMessageService, MessagingService, NamespaceQueueRouter};
use tasker_orchestration::workflow::{
    run_demo, DemoConfig, InMemoryTaskStore, TaskStore, WorkflowQueues, ORDER_FULFILLMENT,
};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn backend(provider: &str) -> (Arc<dyn MessagingService>, Arc<dyn TaskStore>) {
    match provider {
        #[cfg(feature = "pgmq")]
        "pgmq" => {
            use tasker_messaging::{PgmqMessageService, PgmqSettings, SecretUrl};
            let url = std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".into());
            let settings = PgmqSettings::new(SecretUrl::new(url))
                .with_pool_size(8)
                .with_install_sql(true);
            let pgmq = Arc::new(PgmqMessageService::new(settings).expect("settings"));
            pgmq.initialize().await.expect("PostgreSQL reachable");
            let store = tasker_orchestration::workflow::PgTaskStore::new(pgmq.clone())
                .await
                .expect("task table");
            (pgmq, Arc::new(store))
        }
        "in_memory" => {
            let messaging: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
            let store = Arc::new(InMemoryTaskStore::new(messaging.clone()));
            (messaging, store)
        }
        other => panic!("PROVIDER={other} is not supported by this build (in_memory, pgmq with --features pgmq)"),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and expects speed.
    let quick = !std::env::args().any(|a| a == "--bench");
    let tasks = if quick { 50 } else { env_usize("TASKS", 1000) };
    let concurrency = env_usize("CONCURRENCY", 1);
    let provider = std::env::var("PROVIDER").unwrap_or_else(|_| "in_memory".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (messaging, store) = backend(&provider).await;
        let prefix = format!("lat{:08x}", rand::random::<u32>());
        let router = NamespaceQueueRouter::new(&format!("{prefix}_{{namespace}}_queue"), "_dlq")
            .expect("valid pattern");
        let config = DemoConfig {
            tasks,
            concurrency,
            transient_failure_rate: 0.0,
            permanent_failure_rate: 0.0,
            router: router.clone(),
            ..DemoConfig::default()
        };
        let summary = run_demo(messaging.clone(), store, config, &|_, _| {})
            .await
            .expect("workflow run");
        println!(
            "workflow_latency provider={provider} tasks={tasks} concurrency={concurrency} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} tasks_per_sec={:.0}",
            summary.latency_p50_ms, summary.latency_p99_ms, summary.latency_max_ms, summary.tasks_per_sec
        );
        for queue in (WorkflowQueues { router }).all(&ORDER_FULFILLMENT).expect("queues") {
            let _ = messaging.delete_queue(&queue).await;
        }
    });
}
