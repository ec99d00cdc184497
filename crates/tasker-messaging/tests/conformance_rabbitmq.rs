//! The conformance suite against the machine's RabbitMQ (quorum queues, the default).
//!
//! Each factory call opens its own connection to the one broker, so "another receiver" in
//! the suite really is another connection.

mod rabbitmq_support;

use std::sync::Arc;

use tasker_messaging::conformance::{run_suite, ProviderFactory};
use tasker_messaging::MessagingService;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_rabbitmq() {
    if rabbitmq_support::service().await.is_none() {
        return;
    }
    let factory: ProviderFactory = Arc::new(|| {
        Box::pin(async {
            let svc = tasker_messaging::RabbitMqMessageService::new(rabbitmq_support::settings())?;
            svc.initialize().await?;
            Ok(Arc::new(svc) as Arc<dyn MessagingService>)
        })
    });
    run_suite("rabbitmq", factory).await.assert_passed();
}
