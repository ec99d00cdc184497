//! The conformance suite against the embedded in-memory provider.

use std::sync::Arc;

use tasker_messaging::conformance::{Credentials, ProviderFactory, Suite};
use tasker_messaging::{InMemoryMessageService, MessagingService};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_in_memory() {
    // Every service the factory returns must see the same queues, as connections to one
    // server do: for the embedded provider that is one shared instance.
    let shared: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
    let factory: ProviderFactory = Arc::new(move || {
        let service = shared.clone();
        Box::pin(async move { Ok(service) })
    });
    Suite::new("in_memory", factory)
        .credentials(Credentials::NoPassword(
            "the in-memory provider has no password".into(),
        ))
        .run()
        .await
        .assert_passed();
}
