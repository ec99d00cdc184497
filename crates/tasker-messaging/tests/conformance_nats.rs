//! The conformance suite against NATS JetStream: the machine's single node (`NATS_URL`),
//! and the three-node cluster `scripts/services/nats.sh` starts on 4231-4233 with streams
//! of three replicas.
//!
//! Each factory call opens its own connection, so "another receiver" in the suite really is
//! another connection. The wrong-password case runs against a private server that requires
//! a user and password (port 4241), since the shared server has no authentication.

mod nats_support;

use std::sync::Arc;

use tasker_messaging::conformance::{url_with_password, Credentials, ProviderFactory, Suite};
use tasker_messaging::{MessagingService, NatsMessageService, NatsSettings};

/// A password the server refuses, with characters that URLs percent-encode.
const WRONG_PASSWORD: &str = "Wr0ng-pw/so%secret";
/// The private password-protected server of the wrong-password case.
const AUTH_PORT: u16 = 4241;

fn factory(settings: NatsSettings) -> ProviderFactory {
    Arc::new(move || {
        let settings = settings.clone();
        Box::pin(async move {
            let svc = NatsMessageService::new(settings)?;
            svc.initialize().await?;
            Ok(Arc::new(svc) as Arc<dyn MessagingService>)
        })
    })
}

/// The suite for `settings`, with a wrong-password service pointed at the private
/// password-protected server.
fn suite(name: &str, settings: NatsSettings, auth_port: u16) -> Suite {
    let mut wrong = settings.clone();
    let url = format!("nats://tasker:right-password@127.0.0.1:{auth_port}");
    wrong.url = tasker_messaging::SecretUrl::new(
        url_with_password(&url, WRONG_PASSWORD).expect("the NATS URL is a URL"),
    );
    Suite::new(name, factory(settings)).credentials(Credentials::WrongPassword {
        factory: factory(wrong),
        password: WRONG_PASSWORD.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_nats() {
    if nats_support::service().await.is_none() {
        return;
    }
    let Some(_auth) =
        nats_support::start_server(AUTH_PORT, &["--user", "tasker", "--pass", "right-password"])
    else {
        return;
    };
    suite("nats", nats_support::settings(), AUTH_PORT)
        .run()
        .await
        .assert_passed();
}

/// The same suite on the three-node cluster, streams of three replicas. (A delete there
/// confirms that the stream leader removed the acked messages before it returns, issue 16.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_nats_cluster() {
    let settings = NatsSettings::new(nats_support::cluster_url())
        .with_connection_timeout(std::time::Duration::from_secs(3))
        .with_replicas(3);
    if nats_support::service_with(settings.clone()).await.is_none() {
        return;
    }
    let Some(_auth) = nats_support::start_server(
        AUTH_PORT + 1,
        &["--user", "tasker", "--pass", "right-password"],
    ) else {
        return;
    };
    suite("nats_cluster", settings, AUTH_PORT + 1)
        .run()
        .await
        .assert_passed();
}
