//! The conformance suite against the machine's RabbitMQ: quorum queues (the default), and
//! classic queues, where the provider counts receipts and dead-letters itself.
//!
//! Each factory call opens its own connection to the one broker, so "another receiver" in
//! the suite really is another connection.

mod rabbitmq_support;

use std::sync::Arc;

use tasker_messaging::conformance::{url_with_password, Credentials, ProviderFactory, Suite};
use tasker_messaging::{MessagingService, RabbitMqQueueType, RabbitMqSettings, SecretUrl};

/// A password the broker refuses, with characters that URLs percent-encode.
const WRONG_PASSWORD: &str = "Wr0ng-pw/so%secret";

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

/// The suite for `settings`, with a wrong-password service built from the same settings.
fn suite(name: &str, settings: RabbitMqSettings) -> Suite {
    let mut wrong = settings.clone();
    wrong.url = SecretUrl::new(
        url_with_password(settings.url.expose(), WRONG_PASSWORD).expect("the AMQP URL is a URL"),
    );
    Suite::new(name, factory(settings)).credentials(Credentials::WrongPassword {
        factory: factory(wrong),
        password: WRONG_PASSWORD.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_rabbitmq() {
    if rabbitmq_support::service().await.is_none() {
        return;
    }
    suite("rabbitmq", rabbitmq_support::settings())
        .run()
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
    suite("rabbitmq_classic", settings)
        .run()
        .await
        .assert_passed();
}
