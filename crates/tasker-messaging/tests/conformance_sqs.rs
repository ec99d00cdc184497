//! The conformance suite against the local SQS endpoint (moto): standard queues, and FIFO
//! queues (the `fifo` setting makes every queue the service creates a `.fifo` queue).
//!
//! Each factory call builds its own client (its own connection pool), so "another receiver"
//! in the suite really is another connection.

mod sqs_support;

use std::sync::Arc;

use tasker_messaging::conformance::{Credentials, ProviderFactory, Suite};
use tasker_messaging::{MessagingService, SqsSettings};

fn factory(settings: SqsSettings) -> ProviderFactory {
    Arc::new(move || {
        let settings = settings.clone();
        Box::pin(async move {
            let svc = tasker_messaging::SqsMessageService::new(settings)?;
            svc.initialize().await?;
            Ok(Arc::new(svc) as Arc<dyn MessagingService>)
        })
    })
}

fn suite(name: &str, settings: SqsSettings) -> Suite {
    Suite::new(name, factory(settings)).credentials(Credentials::NoPassword(
        "moto accepts any credentials, so no wrong secret key can fail here (real SQS refuses \
         one); redaction of the secret key is tested in tests/sqs.rs"
            .into(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqs() {
    if sqs_support::service().await.is_none() {
        return;
    }
    suite("sqs", sqs_support::settings())
        .run()
        .await
        .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sqs_fifo() {
    if sqs_support::service().await.is_none() {
        return;
    }
    suite("sqs_fifo", sqs_support::settings().with_fifo(true))
        .run()
        .await
        .assert_passed();
}
