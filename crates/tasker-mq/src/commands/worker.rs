//! `tasker-mq worker`: the sample workflow's executor pools as a long-lived process, with
//! `GET /health` (the coordinator's aggregated state, 503 when unhealthy) and `GET /metrics`
//! (Prometheus text).
//!
//! The provider is wrapped as metrics -> circuit breaker -> provider, so every call is counted
//! and a failing backend trips the breaker the health state reads. Ctrl-C (or `--run-for-secs`)
//! drains the pools and gives unfinished leases back before exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use clap::Args;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tasker_messaging::observability::MetricsService;
use tasker_messaging::resilience::{
    CircuitBreakerManager, CircuitState, GlobalBackpressureController, HealthMonitor, HealthPolicy,
    HealthState,
};
use tasker_messaging::MessagingService;
use tasker_orchestration::coordinator::Resilience;
use tasker_orchestration::workflow::demo::{create_workflow_queues, submit_task, workflow_pools};
use tasker_orchestration::workflow::{DemoConfig, WorkflowQueues, ORDER_FULFILLMENT};
use tasker_orchestration::{CoordinatorConfig, OrchestrationLoopCoordinator};
use tokio_util::sync::CancellationToken;

use crate::commands::demo::{demo_router, task_store};
use crate::provider::GlobalOpts;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Address of the HTTP endpoints (/health, /metrics).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Workers per pool at least.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub min_workers: usize,
    /// Workers per pool at most.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_workers: usize,
    /// Messages per receive.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub batch_size: usize,
    /// Also submit this many sample tasks per second (0: only process what arrives).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub submit_per_sec: u64,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub run_for_secs: u64,
}

#[derive(Clone)]
struct AppState {
    coordinator: Arc<OrchestrationLoopCoordinator>,
    breakers: Arc<CircuitBreakerManager>,
    prometheus: PrometheusHandle,
}

pub async fn run(global: &GlobalOpts, args: WorkerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.min_workers >= 1 && args.min_workers <= args.max_workers,
        "need 1 <= --min-workers <= --max-workers"
    );
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    let (config, provider) = global.connect().await?;
    let breakers = Arc::new(CircuitBreakerManager::new(config.circuit_breaker.clone()));
    let breaker = breakers.get_or_create(provider.provider().as_str());
    let protected: Arc<dyn MessagingService> =
        Arc::new(breakers.protect(provider.provider().as_str(), provider.clone()));
    let messaging: Arc<dyn MessagingService> = Arc::new(MetricsService::new(protected));

    let queues = WorkflowQueues {
        router: demo_router(&config)?,
    };
    let demo = DemoConfig {
        min_workers: args.min_workers,
        max_workers: args.max_workers,
        batch_size: args.batch_size,
        router: queues.router.clone(),
        ..DemoConfig::default()
    };
    create_workflow_queues(&*messaging, &ORDER_FULFILLMENT, &queues, demo.max_attempts).await?;
    let store = task_store(&config, &messaging).await?;
    let pools = workflow_pools(&messaging, &store, &ORDER_FULFILLMENT, &queues, &demo)?;
    let health =
        HealthMonitor::new(messaging.clone(), HealthPolicy::default()).with_breaker(breaker);
    let coordinator = Arc::new(OrchestrationLoopCoordinator::with_resilience(
        messaging.clone(),
        pools,
        CoordinatorConfig::default(),
        Resilience {
            health: Some(Arc::new(health)),
            backpressure: Some(GlobalBackpressureController::new(
                config.backpressure.clone(),
            )),
            budget: None,
        },
    ));
    coordinator.start().await;

    let state = AppState {
        coordinator: coordinator.clone(),
        breakers,
        prometheus,
    };
    let app = Router::new()
        .route("/health", get(health_endpoint))
        .route("/metrics", get(metrics_endpoint))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let address = listener.local_addr()?;
    eprintln!(
        "worker on {} ({} pools); http://{address}/health and /metrics",
        config.provider,
        coordinator.pools().len()
    );

    let stop = CancellationToken::new();
    let server = {
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    let submitter = (args.submit_per_sec > 0).then(|| {
        let (store, queues, stop) = (store.clone(), queues.clone(), stop.clone());
        let every = Duration::from_secs_f64(1.0 / args.submit_per_sec as f64);
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(demo.seed);
            let mut ticker = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                if let Err(error) =
                    submit_task(&*store, &ORDER_FULFILLMENT, &queues, &mut rng, &demo).await
                {
                    tracing::warn!(%error, "could not submit a task");
                }
            }
        })
    });

    if args.run_for_secs > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.run_for_secs)) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }
    stop.cancel();
    if let Some(submitter) = submitter {
        let _ = submitter.await;
    }
    let reports = coordinator.shutdown().await;
    let _ = server.await;
    for (pool, report) in reports {
        if report.aborted > 0 {
            eprintln!(
                "{pool}: {} workers stopped mid-batch, {} leases given back",
                report.aborted, report.released
            );
        }
    }
    let _ = messaging.shutdown().await;
    eprintln!("worker stopped");
    Ok(())
}

async fn health_endpoint(State(state): State<AppState>) -> impl IntoResponse {
    let status = match state.coordinator.status() {
        Some(status) => status,
        None => state.coordinator.tick().await,
    };
    let code = match status.health {
        HealthState::Healthy | HealthState::Degraded { .. } => StatusCode::OK,
        HealthState::Starting | HealthState::Unhealthy { .. } => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = serde_json::json!({
        "health": status.health,
        "messaging": status.messaging_health(),
        "pressure": status.pressure,
        "queue_depth": status.queue_depth,
        "in_flight": status.in_flight,
        "pools": status.pools,
        "circuit_breakers": state.breakers.snapshot(),
    });
    (code, Json(body))
}

async fn metrics_endpoint(State(state): State<AppState>) -> impl IntoResponse {
    if let Some(status) = state.coordinator.status() {
        for pool in &status.pools {
            let labels = [("pool", pool.name.clone()), ("queue", pool.queue.clone())];
            metrics::gauge!("tasker_queue_depth", &labels).set(pool.queue_depth as f64);
            metrics::gauge!("tasker_queue_in_flight", &labels).set(pool.in_flight as f64);
            metrics::gauge!("tasker_pool_workers", &labels).set(pool.workers as f64);
            metrics::counter!("tasker_messages_retried_total", &labels)
                .absolute(pool.stats.retried);
            metrics::counter!("tasker_pool_processed_total", &labels)
                .absolute(pool.stats.processed);
            metrics::counter!("tasker_pool_failed_total", &labels).absolute(pool.stats.failed);
        }
        metrics::gauge!("tasker_backpressure_level").set(status.pressure as u8 as f64);
    }
    for breaker in state.breakers.snapshot().breakers {
        let value = match breaker.state {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        };
        metrics::gauge!("tasker_circuit_breaker_state", "name" => breaker.name.clone()).set(value);
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.prometheus.render(),
    )
}
