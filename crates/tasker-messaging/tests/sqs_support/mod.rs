//! Shared by the SQS test files: the local endpoint (moto, `SQS_ENDPOINT_URL`, default
//! http://127.0.0.1:4566) with static test credentials, and a reachability gate.
//!
//! When the endpoint is unreachable the tests fail under CI (`CI=true`) and are skipped with
//! a message elsewhere; `scripts/services/sqs.sh` starts moto.

#![allow(dead_code)]

use std::sync::Arc;

use tasker_messaging::{
    MessagingService, SecretUrl, SqsCredentials, SqsMessageService, SqsSettings,
};

pub fn endpoint() -> String {
    std::env::var("SQS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

pub fn settings() -> SqsSettings {
    let mut s = SqsSettings::new(Some(endpoint()))
        .with_credentials(SqsCredentials::new("test", "test"))
        .with_region("us-east-1");
    s.operation_timeout = std::time::Duration::from_secs(10);
    s
}

/// A connected service, or `None` (test skipped) when the endpoint is unreachable outside CI.
pub async fn service_with(settings: SqsSettings) -> Option<Arc<SqsMessageService>> {
    let svc = SqsMessageService::new(settings).expect("valid settings");
    match svc.initialize().await {
        Ok(()) => Some(Arc::new(svc)),
        Err(e) => {
            let url = SecretUrl::new(endpoint());
            let msg = format!(
                "the SQS endpoint is unreachable at {url}: {e} (start it with scripts/services/sqs.sh)"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

pub async fn service() -> Option<Arc<SqsMessageService>> {
    service_with(settings()).await
}
