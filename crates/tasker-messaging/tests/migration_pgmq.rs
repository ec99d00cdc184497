//! Migration in-memory -> PGMQ -> in-memory on the machine's PostgreSQL (`DATABASE_URL`,
//! default `postgres://postgres:postgres@127.0.0.1:5432/test`): 10,000 messages, every message
//! id and correlation id accounted for each way. Built with feature `pgmq`. Skipped with a
//! message when PostgreSQL is unreachable outside CI; failed in CI.

mod migration_support;

use std::sync::Arc;

use tasker_messaging::{MessagingService, PgmqMessageService, PgmqSettings, SecretUrl};

async fn pgmq() -> tasker_messaging::Result<Arc<dyn MessagingService>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".into());
    let settings = PgmqSettings::new(SecretUrl::new(url))
        .with_pool_size(4)
        .with_install_sql(true);
    let svc = PgmqMessageService::new(settings)?;
    svc.initialize().await?;
    Ok(Arc::new(svc))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_in_memory_to_pgmq_and_back() {
    match pgmq().await {
        Ok(probe) => probe.shutdown().await.unwrap(),
        Err(e) if e.is_retryable() && std::env::var("CI").map_or(true, |v| v != "true") => {
            eprintln!("SKIPPED: PostgreSQL unreachable ({e}); set CI=true to make this fail");
            return;
        }
        Err(e) => panic!("PostgreSQL is not usable: {e}"),
    }
    migration_support::round_trip("pgmq", Arc::new(|| Box::pin(pgmq()))).await;
}
