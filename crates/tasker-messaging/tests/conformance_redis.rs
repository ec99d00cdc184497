//! The conformance suite against the machine's Redis, and against the 3-master Redis Cluster
//! on 127.0.0.1:7000-7002 (both started by scripts/services/redis.sh).
//!
//! Each factory call opens its own connections, so "another receiver" in the suite really is
//! another connection.

mod redis_support;

use std::sync::Arc;

use tasker_messaging::conformance::{Credentials, ProviderFactory, Suite};
use tasker_messaging::{MessagingService, RedisMessageService, RedisSettings, SecretUrl};

/// A password the server refuses, with characters that URLs percent-encode.
const WRONG_PASSWORD: &str = "Wr0ng-pw/so%secret";

fn factory(settings: RedisSettings) -> ProviderFactory {
    Arc::new(move || {
        let settings = settings.clone();
        Box::pin(async move {
            let svc = RedisMessageService::new(settings)?;
            svc.initialize().await?;
            Ok(Arc::new(svc) as Arc<dyn MessagingService>)
        })
    })
}

/// The suite for `settings`, with a wrong-password service built from the same settings.
fn suite(name: &str, settings: RedisSettings) -> Suite {
    let mut wrong = settings.clone();
    wrong.url = SecretUrl::new(redis_support::with_password(
        settings.url.expose(),
        WRONG_PASSWORD,
    ));
    Suite::new(name, factory(settings)).credentials(Credentials::WrongPassword {
        factory: factory(wrong),
        password: WRONG_PASSWORD.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_redis() {
    if redis_support::service().await.is_none() {
        return;
    }
    suite("redis", redis_support::settings())
        .run()
        .await
        .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_redis_cluster() {
    if redis_support::service_with(redis_support::cluster_settings())
        .await
        .is_none()
    {
        return;
    }
    suite("redis_cluster", redis_support::cluster_settings())
        .run()
        .await
        .assert_passed();
}
