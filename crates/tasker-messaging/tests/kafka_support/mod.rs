//! Shared by the Kafka test files: the broker list and a reachability gate.
//!
//! Tests run against the machine's Kafka-protocol broker (`KAFKA_BROKERS`, default
//! 127.0.0.1:9092; `scripts/services/kafka.sh` starts tansu there). When it is unreachable
//! they fail under CI (`CI=true`), and are skipped with a message elsewhere.

#![allow(dead_code)]

use std::sync::Arc;

use tasker_messaging::{KafkaMessageService, KafkaSettings, MessagingService};

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn settings() -> KafkaSettings {
    let mut s = KafkaSettings::new(brokers());
    s.operation_timeout = std::time::Duration::from_secs(5);
    s
}

/// A connected service, or `None` (test skipped) when the broker is unreachable outside CI.
pub async fn service_with(settings: KafkaSettings) -> Option<Arc<KafkaMessageService>> {
    let svc = KafkaMessageService::new(settings).expect("valid settings");
    match svc.initialize().await {
        Ok(()) => Some(Arc::new(svc)),
        Err(e) => {
            let msg = format!(
                "Kafka is unreachable at {}: {e} (start it with scripts/services/kafka.sh)",
                brokers()
            );
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

pub async fn service() -> Option<Arc<KafkaMessageService>> {
    service_with(settings()).await
}
