//! Tests of the provider's internals against the machine's broker (`AMQP_URL`, default guest
//! on 127.0.0.1): skipped with a message when it is unreachable, failed under CI.

use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;

use super::channel::tests::FAIL_BEFORE_COMMIT;
use super::version::{probe, BrokerVersion};
use super::{RabbitMqMessageService, RabbitMqSettings};
use crate::config::RabbitMqQueueType;
use crate::message::OutgoingMessage;
use crate::queue_name::QueueName;
use crate::service::MessagingService;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn unreachable(what: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("RabbitMQ is unreachable: {what}");
    }
    eprintln!("SKIPPED: RabbitMQ is unreachable: {what}");
}

async fn service(queue_type: RabbitMqQueueType) -> Option<RabbitMqMessageService> {
    let mut settings = RabbitMqSettings::new(url());
    settings.queue_type = queue_type;
    settings.connection_timeout = Duration::from_secs(5);
    let svc = RabbitMqMessageService::new(settings).ok()?;
    match svc.initialize().await {
        Ok(()) => Some(svc),
        Err(e) => {
            unreachable(&e.to_string());
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reads_the_brokers_product_and_version() {
    let uri = url().parse().expect("AMQP URL");
    let Some(server) = probe(&uri, &OwnedTLSConfig::default(), Duration::from_secs(5)).await else {
        return unreachable("the version probe got no connection.start");
    };
    assert_eq!(server.product.as_deref(), Some("RabbitMQ"));
    let version = server.version.expect("a version property");
    assert!(version >= BrokerVersion { major: 3, minor: 8 }, "{version}");
    // The service reads the same on connecting.
    let Some(svc) = service(RabbitMqQueueType::Quorum).await else {
        return;
    };
    let link = svc.inner.link().await.unwrap();
    assert_eq!(link.broker, Some(version));
    svc.shutdown().await.unwrap();
}

/// A classic queue's release moves the message (a copy with the count, then the ack of the
/// original) in one transaction: when the channel breaks after the publish and the ack but
/// before the commit, the broker keeps only the original, so there is one live copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_broken_before_its_commit_leaves_one_copy() {
    let Some(svc) = service(RabbitMqQueueType::Classic).await else {
        return;
    };
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let q = QueueName::new(format!("rt_txfault_{suffix}")).unwrap();
    svc.create_queue(&q).await.unwrap();
    let sent = OutgoingMessage::new("once");
    svc.send(&q, sent.clone()).await.unwrap();
    let got = svc.receive(&q, 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    FAIL_BEFORE_COMMIT.store(true, Ordering::Release);
    svc.change_message_visibility(&q, got[0].receipt(), Duration::ZERO)
        .await
        .unwrap();
    assert!(
        !FAIL_BEFORE_COMMIT.load(Ordering::Acquire),
        "the release did not move the message"
    );
    // Everything receivable, from another connection, until the queue stays empty.
    let Some(other) = service(RabbitMqQueueType::Classic).await else {
        return;
    };
    let mut copies = Vec::new();
    let mut empty = 0;
    while empty < 3 {
        let got = other
            .receive(&q, 10, Duration::from_secs(30))
            .await
            .unwrap();
        if got.is_empty() {
            empty += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        copies.extend(got.into_iter().map(|m| m.metadata.message_id));
    }
    assert_eq!(copies, vec![sent.message_id], "one live copy");
    other.delete_queue(&q).await.unwrap();
    other.shutdown().await.unwrap();
    svc.shutdown().await.unwrap();
}

/// The limit probe of another process reads a queue's stored limit, says "disabled" for a
/// queue without one, and never creates a queue that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_probe_reads_and_never_creates() {
    use super::limits::StoredLimit;
    use crate::service::QueueOptions;
    let Some(creator) = service(RabbitMqQueueType::Quorum).await else {
        return;
    };
    let Some(reader) = service(RabbitMqQueueType::Quorum).await else {
        return;
    };
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let limited = QueueName::new(format!("rt_probe_l_{suffix}")).unwrap();
    let open = QueueName::new(format!("rt_probe_o_{suffix}")).unwrap();
    let missing = QueueName::new(format!("rt_probe_m_{suffix}")).unwrap();
    creator
        .create_queue_with(&limited, &QueueOptions::with_max_receive_count(4))
        .await
        .unwrap();
    creator
        .create_queue_with(&open, &QueueOptions::with_max_receive_count(0))
        .await
        .unwrap();
    let inner = &reader.inner;
    assert_eq!(
        inner.read_stored_limit(&limited).await,
        Some(StoredLimit::Max(4))
    );
    assert_eq!(inner.max_receive_count(&limited).await, 4);
    assert_eq!(
        inner.read_stored_limit(&open).await,
        Some(StoredLimit::Disabled)
    );
    assert_eq!(
        inner.read_stored_limit(&missing).await,
        Some(StoredLimit::Missing)
    );
    let link = inner.link().await.unwrap();
    assert!(matches!(
        inner.ready_count(&link, &missing).await,
        Err(crate::error::MessagingError::QueueNotFound { .. })
    ));
    creator.delete_queue(&limited).await.unwrap();
    creator.delete_queue(&open).await.unwrap();
    reader.shutdown().await.unwrap();
    creator.shutdown().await.unwrap();
}

/// RabbitMQ closes the whole connection (504 CHANNEL_ERROR "unexpected command while
/// processing 'tx.commit'") when any command reaches a channel while its transaction's commit
/// waits for the queue to confirm a publish. Releases on a classic queue are such moves, on
/// the channel receives use: receives and releases racing on one queue must never break the
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_racing_transactional_moves_keep_the_connection() {
    let Some(svc) = service(RabbitMqQueueType::Classic).await else {
        return;
    };
    let svc = std::sync::Arc::new(svc);
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let q = QueueName::new(format!("rt_txrace_{suffix}")).unwrap();
    svc.create_queue(&q).await.unwrap();
    for _ in 0..40 {
        svc.send(&q, OutgoingMessage::new("m")).await.unwrap();
    }
    let epoch = svc.inner.link().await.unwrap().epoch;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (svc, q) = (svc.clone(), q.clone());
            tokio::spawn(async move {
                for _ in 0..60 {
                    let got = svc.receive(&q, 3, Duration::from_secs(30)).await?;
                    for m in got {
                        svc.change_message_visibility(&q, m.receipt(), Duration::ZERO)
                            .await?;
                    }
                }
                Ok::<_, crate::error::MessagingError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .unwrap()
            .expect("receive and release on a live connection");
    }
    assert_eq!(
        svc.inner.link().await.unwrap().epoch,
        epoch,
        "the connection broke and was reopened"
    );
    svc.delete_queue(&q).await.unwrap();
    svc.shutdown().await.unwrap();
}
