//! The conformance suite against the machine's RabbitMQ: quorum queues (the default), and
//! classic queues, where the provider counts receipts and dead-letters itself.
//!
//! Each factory call opens its own connection to the one broker, so "another receiver" in
//! the suite really is another connection.

mod rabbitmq_support;

use std::sync::Arc;

use tasker_messaging::conformance::{run_suite, ProviderFactory};
use tasker_messaging::{MessagingService, RabbitMqQueueType, RabbitMqSettings};

fn factory(settings: RabbitMqSettings) -> ProviderFactory {
    Arc::new(move || {
        let settings = settings.clone();
        Box::pin(async move {
            let svc = tasker_messaging::RabbitMqMessageService::new(settings)?;
            svc.initialize().await?;
            Ok(Arc::new(svc) as Arc<dyn MessagingService>)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_rabbitmq() {
    if rabbitmq_support::service().await.is_none() {
        return;
    }
    run_suite("rabbitmq", factory(rabbitmq_support::settings()))
        .await
        .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_rabbitmq_classic() {
    if rabbitmq_support::service().await.is_none() {
        return;
    }
    let mut settings = rabbitmq_support::settings();
    settings.queue_type = RabbitMqQueueType::Classic;
    run_suite("rabbitmq_classic", factory(settings))
        .await
        .assert_passed();
}
