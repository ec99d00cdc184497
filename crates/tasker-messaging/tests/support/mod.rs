//! Shared by the PGMQ tests: the database URL, a service per test, unique queue names.
#![allow(dead_code)]

use std::time::Duration;

use tasker_messaging::{MessagingService, PgmqMessageService, PgmqSettings, QueueName, SecretUrl};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/test";

pub fn database_url() -> SecretUrl {
    SecretUrl::new(std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into()))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Settings for the test database, installing pgmq's SQL when missing.
pub fn settings() -> PgmqSettings {
    PgmqSettings::new(database_url())
        .with_pool_size(4)
        .with_install_sql(true)
}

/// An initialized service, or `None` (test skipped) when PostgreSQL is unreachable outside CI.
/// In CI an unreachable database fails the test.
pub async fn service() -> Option<PgmqMessageService> {
    service_with(settings()).await
}

pub async fn service_with(settings: PgmqSettings) -> Option<PgmqMessageService> {
    let svc = PgmqMessageService::new(settings).expect("valid settings");
    match svc.initialize().await {
        Ok(()) => Some(svc),
        Err(e) if e.is_retryable() && !in_ci() => {
            eprintln!("SKIPPED: PostgreSQL unreachable ({e}); set CI=true to make this fail");
            None
        }
        Err(e) => panic!("PostgreSQL at {} is not usable: {e}", database_url()),
    }
}

/// A fresh queue name, unique across concurrent tests and runs.
pub fn queue(prefix: &str) -> QueueName {
    QueueName::new(format!("t_{prefix}_{:08x}", rand::random::<u32>())).unwrap()
}

/// A raw pool for plain SQL in tests.
pub async fn raw_pool() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database_url().expose())
        .await
        .expect("connect to PostgreSQL")
}
