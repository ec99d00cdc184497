//! The conformance suite against the machine's Kafka-protocol broker (tansu).
//!
//! Each factory call builds a new service. Services of one process share one consumer per
//! queue (Kafka gives a partition to one group member; see the provider's module docs), so
//! "another receiver" in the suite is another service over the same lease table, and C17
//! (leases that outlive the receiver) is skipped: `durable_leases` is declared absent.

mod kafka_support;

use std::sync::Arc;

use tasker_messaging::conformance::{Credentials, ProviderFactory, Suite};
use tasker_messaging::{KafkaMessageService, MessagingService};

fn factory() -> ProviderFactory {
    Arc::new(move || {
        Box::pin(async move {
            let svc = KafkaMessageService::new(kafka_support::settings())?;
            svc.initialize().await?;
            Ok(Arc::new(svc) as Arc<dyn MessagingService>)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_kafka() {
    let Some(_keep) = kafka_support::service().await else {
        return;
    };
    Suite::new("kafka", factory())
        .credentials(Credentials::NoPassword(
            "the Kafka provider connects without credentials (no SASL; the broker list refuses them)"
                .into(),
        ))
        .run()
        .await
        .assert_passed();
}
