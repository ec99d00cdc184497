//! `tasker-mq worker`: the sample workflow's executor pools as a long-lived process, with
//! `GET /health` (the coordinator's aggregated state, 503 when unhealthy) and `GET /metrics`
//! (Prometheus text).
//!
//! The provider is wrapped as metrics -> retry -> circuit breaker -> provider
//! (`resilient::wrap`), so every call is counted and a failing backend trips the breaker the
//! health state reads. Through an outage the pools, the submitter and the HTTP endpoints keep
//! running: `/health` answers 503 while unhealthy and 200 again once the backend is back, with
//! no restart. Only a permanent error (a deleted queue, bad configuration) stops the worker,
//! with exit status 1. Ctrl-C (or `--run-for-secs`) drains the pools and gives unfinished
//! leases back before exiting.

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
use tasker_messaging::resilience::{
    CircuitBreakerManager, CircuitState, GlobalBackpressureController, HealthMonitor, HealthPolicy,
    HealthState,
};
use tasker_messaging::MessagingService;
use tasker_messaging::MetricsService;
use tasker_orchestration::coordinator::Resilience;
use tasker_orchestration::resilient::Resilient;
use tasker_orchestration::workflow::demo::{create_workflow_queues, submit_task, workflow_pools};
use tasker_orchestration::workflow::{
    DemoConfig, InMemoryTaskStore, TaskStore, WorkflowQueues, ORDER_FULFILLMENT,
};
use tasker_orchestration::{CoordinatorConfig, OrchestrationLoopCoordinator};
use tokio_util::sync::CancellationToken;

use crate::commands::demo::{connect_with_store, demo_router};
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
    resilient: Resilient,
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
    let connected = connect_with_store(global).await?;
    let (config, store, resilient) = (
        connected.config.clone(),
        connected.store.clone(),
        connected.resilient.clone(),
    );
    let breakers = resilient.breakers.clone();
    let breaker = resilient.breaker.clone();
    let messaging: Arc<dyn MessagingService> =
        Arc::new(MetricsService::new(resilient.service.clone()));
    // The in-memory store sends through the service it is given: give it the counted one.
    // (The PostgreSQL store sends inside its own transactions, under the same breaker.)
    let store = if config.provider == tasker_messaging::ProviderKind::Pgmq {
        store
    } else {
        Arc::new(InMemoryTaskStore::new(messaging.clone())) as Arc<dyn TaskStore>
    };

    let queues = WorkflowQueues {
        router: demo_router(&config)?,
    };
    let demo = DemoConfig {
        min_workers: args.min_workers,
        max_workers: args.max_workers,
        batch_size: args.batch_size,
        router: queues.router.clone(),
        resilience: Some(resilient.clone()),
        ..DemoConfig::default()
    };
    resilient
        .ride
        .run("create queues", None, || {
            create_workflow_queues(&*messaging, &ORDER_FULFILLMENT, &queues, demo.max_attempts)
        })
        .await?;
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
        resilient: resilient.clone(),
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
            // After an outage, go on at the set rate rather than catching up in a burst.
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                // Rides through outages (retrying the same task); only a permanent error ends
                // the submitter.
                let submitted = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = submit_task(&*store, &ORDER_FULFILLMENT, &queues, &mut rng, &demo) => r,
                };
                submitted?;
            }
            Ok::<(), tasker_orchestration::workflow::StoreError>(())
        })
    });

    // Runs until Ctrl-C, `--run-for-secs`, or a permanent error of a pool or the submitter.
    let mut submitter = submitter;
    let fatal = async {
        let mut check = tokio::time::interval(Duration::from_millis(250));
        loop {
            check.tick().await;
            if let Some(why) = coordinator.fatal_error() {
                return why;
            }
            if let Some(handle) = submitter.as_mut().filter(|h| h.is_finished()) {
                return match handle.await {
                    Ok(Err(error)) => format!("the submitter stopped: {error}"),
                    Ok(Ok(())) => "the submitter stopped".to_owned(),
                    Err(error) => format!("the submitter failed: {error}"),
                };
            }
        }
    };
    let run_for = async {
        if args.run_for_secs > 0 {
            tokio::time::sleep(Duration::from_secs(args.run_for_secs)).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let stopped_by: Option<String> = tokio::select! {
        _ = run_for => None,
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for Ctrl-C")?;
            None
        }
        why = fatal => Some(why),
    };
    stop.cancel();
    if let Some(submitter) = submitter.filter(|h| !h.is_finished()) {
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
    let faults = resilient.report();
    eprintln!(
        "faults: {} retried operations, {} breaker openings, {:.1} s degraded",
        faults.retried_operations, faults.breaker_openings, faults.degraded_secs
    );
    if let Some(why) = stopped_by {
        anyhow::bail!("worker stopped: {why}");
    }
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
        "faults": state.resilient.report(),
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
    let faults = state.resilient.report();
    metrics::counter!("tasker_retried_operations_total").absolute(faults.retried_operations);
    metrics::counter!("tasker_outages_total").absolute(faults.outages);
    metrics::gauge!("tasker_degraded_seconds").set(faults.degraded_secs);
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
