//! The conformance suite against the PGMQ provider on the machine's PostgreSQL
//! (`DATABASE_URL`, default `postgres://postgres:postgres@127.0.0.1:5432/test`). Every case gets
//! its own service (its own pool and listener) on the same database. Fails when PostgreSQL is
//! unreachable under CI=true; skips with a message otherwise.

mod support;

use std::sync::Arc;

use tasker_messaging::conformance::{
    url_with_password, Credentials, ProviderFactory, Suite, TransactionalSend,
};
use tasker_messaging::{MessagingService, PgmqMessageService, SecretUrl};

/// A password PostgreSQL refuses, with characters that URLs percent-encode.
const WRONG_PASSWORD: &str = "Wr0ng-pw/so%secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_pgmq() {
    // Installs pgmq's SQL when the database has none, and fails (in CI) when unreachable.
    let Some(probe) = support::service().await else {
        return;
    };
    probe.shutdown().await.unwrap();
    // Stress mode runs each case's copies at once (C11 alone opens 9 services per copy): one
    // pooled connection per service keeps that under PostgreSQL's default 100.
    let stress = std::env::var("CONFORMANCE_PARALLEL").is_ok_and(|n| n.trim() != "1");
    let pool_size = if stress { 1 } else { 2 };
    let factory: ProviderFactory = Arc::new(move || {
        Box::pin(async move {
            let svc = PgmqMessageService::new(support::settings().with_pool_size(pool_size))?;
            svc.initialize().await?;
            Ok(Arc::new(svc) as Arc<dyn MessagingService>)
        })
    });
    // The machine's PostgreSQL trusts local logins, so a wrong password alone would be
    // accepted: the URL also names a role that does not exist, which every server refuses.
    let wrong: ProviderFactory = Arc::new(|| {
        Box::pin(async {
            let url = url_with_password(support::database_url().expose(), WRONG_PASSWORD)?;
            let mut url = url::Url::parse(&url).expect("a URL");
            url.set_username("tasker_no_such_role").expect("a username");
            let url = String::from(url);
            let mut settings = support::settings().with_pool_size(1);
            settings.database_url = SecretUrl::new(url);
            let svc = PgmqMessageService::new(settings)?;
            svc.initialize().await?;
            Ok(Arc::new(svc) as Arc<dyn MessagingService>)
        })
    });
    // The transactional path: one transaction per call, committed. Shared by the copies of a
    // stress run; each call needs only its transaction's connection (the queue is looked up
    // on it), so copies beyond the pool's size just wait their turn.
    let sender = Arc::new(
        PgmqMessageService::new(support::settings().with_pool_size(2)).expect("valid settings"),
    );
    sender.initialize().await.unwrap();
    let transactional: TransactionalSend = Arc::new(move |queue, messages| {
        let sender = sender.clone();
        Box::pin(async move {
            let mut tx = sender.pool()?.begin().await.map_err(|e| {
                tasker_messaging::MessagingError::Connection {
                    provider: tasker_messaging::ProviderKind::Pgmq,
                    message: e.to_string(),
                }
            })?;
            let ids = if messages.len() == 1 {
                let message = messages.into_iter().next().expect("one message");
                vec![sender.send_in_transaction(&mut tx, &queue, message).await?]
            } else {
                sender
                    .send_batch_in_transaction(&mut tx, &queue, messages)
                    .await?
            };
            tx.commit()
                .await
                .map_err(|e| tasker_messaging::MessagingError::Connection {
                    provider: tasker_messaging::ProviderKind::Pgmq,
                    message: e.to_string(),
                })?;
            Ok(ids)
        })
    });
    Suite::new("pgmq", factory)
        .credentials(Credentials::WrongPassword {
            factory: wrong,
            password: WRONG_PASSWORD.into(),
        })
        .transactional_send(transactional)
        .run()
        .await
        .assert_passed();
}
