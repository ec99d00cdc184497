//! Shared by the Redis test files: the servers' URLs and a reachability gate.
//!
//! Tests run against the machine's real Redis (`REDIS_URL`, default 127.0.0.1:6379) and the
//! 3-master cluster `scripts/services/redis.sh` starts (`REDIS_CLUSTER_URL`, default
//! `redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002`). When one is unreachable
//! its tests fail under CI (`CI=true`) and are skipped with a message elsewhere.

#![allow(dead_code)]

use std::sync::Arc;

use tasker_messaging::{MessagingService, RedisMessageService, RedisSettings, SecretUrl};

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn cluster_url() -> String {
    std::env::var("REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002".into())
}

pub fn settings() -> RedisSettings {
    RedisSettings::new(SecretUrl::new(redis_url()))
}

pub fn cluster_settings() -> RedisSettings {
    RedisSettings::new(SecretUrl::new(cluster_url()))
}

/// A connected service, or `None` (test skipped) when the server is unreachable outside CI.
pub async fn service_with(settings: RedisSettings) -> Option<Arc<RedisMessageService>> {
    let url = settings.url.clone();
    let svc = RedisMessageService::new(settings).expect("valid settings");
    match svc.initialize().await {
        Ok(()) => Some(Arc::new(svc)),
        Err(e) => {
            let msg = format!(
                "Redis is unreachable at {url}: {e} (start it with scripts/services/redis.sh)"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            None
        }
    }
}

pub async fn service() -> Option<Arc<RedisMessageService>> {
    service_with(settings()).await
}

/// `url` with `password` (percent-encoded) as its userinfo; works for the comma-separated
/// cluster form, which is not a URL the `url` crate parses.
pub fn with_password(url: &str, password: &str) -> String {
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect();
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let hosts = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://:{encoded}@{hosts}")
}
