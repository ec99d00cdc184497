//! The conformance suite against the PGMQ provider on the machine's PostgreSQL
//! (`DATABASE_URL`, default `postgres://postgres:postgres@127.0.0.1:5432/test`). Every case gets
//! its own service (its own pool and listener) on the same database. Fails when PostgreSQL is
//! unreachable under CI=true; skips with a message otherwise.

mod support;

use std::sync::Arc;

use tasker_messaging::conformance::{run_suite, ProviderFactory};
use tasker_messaging::{MessagingService, PgmqMessageService};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_pgmq() {
    // Installs pgmq's SQL when the database has none, and fails (in CI) when unreachable.
    let Some(probe) = support::service().await else {
        return;
    };
    probe.shutdown().await.unwrap();
    let factory: ProviderFactory = Arc::new(|| {
        Box::pin(async {
            let svc = PgmqMessageService::new(support::settings().with_pool_size(2))?;
            svc.initialize().await?;
            Ok(Arc::new(svc) as Arc<dyn MessagingService>)
        })
    });
    run_suite("pgmq", factory).await.assert_passed();
}
