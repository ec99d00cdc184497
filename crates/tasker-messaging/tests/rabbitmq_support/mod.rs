//! Shared by the RabbitMQ test files: the broker's URL and a reachability gate.
//!
//! Tests run against the machine's real broker (`AMQP_URL`, default guest on 127.0.0.1).
//! When it is unreachable they fail under CI (`CI=true`), and are skipped with a message
//! elsewhere; `scripts/services/rabbitmq.sh` starts it.

#![allow(dead_code)]

use std::sync::Arc;

use tasker_messaging::{MessagingService, RabbitMqMessageService, RabbitMqSettings, SecretUrl};

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn settings() -> RabbitMqSettings {
    let mut s = RabbitMqSettings::new(amqp_url());
    s.connection_timeout = std::time::Duration::from_secs(5);
    s
}

/// A connected service, or `None` (test skipped) when the broker is unreachable outside CI.
pub async fn service_with(settings: RabbitMqSettings) -> Option<Arc<RabbitMqMessageService>> {
    let svc = RabbitMqMessageService::new(settings).expect("valid settings");
    match svc.initialize().await {
        Ok(()) => Some(Arc::new(svc)),
        Err(e) => {
            let url = SecretUrl::new(amqp_url());
            let msg = format!(
                "RabbitMQ is unreachable at {url}: {e} (start it with scripts/services/rabbitmq.sh)"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

pub async fn service() -> Option<Arc<RabbitMqMessageService>> {
    service_with(settings()).await
}

/// Deletes an exchange a test declared (the service's AMQP extensions have no delete), with raw
/// lapin on its own connection, so test runs leave no exchanges behind.
pub async fn delete_exchange(name: &str) {
    use lapin::options::ExchangeDeleteOptions;
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("raw lapin connects");
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_delete(name.into(), ExchangeDeleteOptions::default())
        .await
        .expect("exchange.delete");
    let _ = conn.close(200, "done".into()).await;
}
