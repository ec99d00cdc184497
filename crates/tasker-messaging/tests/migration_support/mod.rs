//! Shared by the migration tests: `round_trip` is generic over the target provider, so each
//! provider's instantiation is one test passing its factory.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tasker_messaging::resilience::{migrate_queue, MigrationOptions, MigrationProgress};
use tasker_messaging::{
    CorrelationId, InMemoryMessageService, MessageId, MessagingService, OutgoingMessage, QueueName,
    Result,
};

pub type TargetFactory =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn MessagingService>>> + Send + Sync>;

/// (message id, correlation id, payload) of every message sent.
pub type Sent = HashMap<MessageId, (Option<CorrelationId>, Vec<u8>)>;

pub fn unique_queue(label: &str) -> QueueName {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    QueueName::new(format!("mig_{label}_{}", &suffix[..8])).unwrap()
}

pub fn in_memory() -> Arc<dyn MessagingService> {
    Arc::new(InMemoryMessageService::default())
}

pub async fn seed(svc: &dyn MessagingService, queue: &QueueName, n: usize) -> Sent {
    svc.create_queue(queue).await.unwrap();
    let mut sent = Sent::new();
    let mut batch = Vec::new();
    for i in 0..n {
        let mut m = OutgoingMessage::new(format!("message {i}").into_bytes());
        if i % 2 == 0 {
            m = m.with_correlation_id(CorrelationId::new());
        }
        sent.insert(m.message_id, (m.correlation_id, m.payload.to_vec()));
        batch.push(m);
        if batch.len() == 500 {
            svc.send_batch(queue, std::mem::take(&mut batch))
                .await
                .unwrap();
        }
    }
    if !batch.is_empty() {
        svc.send_batch(queue, batch).await.unwrap();
    }
    sent
}

/// Receives and deletes everything; returns each id with how often it was seen.
pub async fn drain(
    svc: &dyn MessagingService,
    queue: &QueueName,
    sent: &Sent,
) -> HashMap<MessageId, u32> {
    let mut seen = HashMap::new();
    loop {
        let batch = svc
            .receive(queue, 500, Duration::from_secs(60))
            .await
            .unwrap();
        if batch.is_empty() {
            return seen;
        }
        for m in &batch {
            let id = m.metadata.message_id;
            let (correlation, payload) = sent.get(&id).unwrap_or_else(|| panic!("unknown id {id}"));
            assert_eq!(
                &m.metadata.correlation_id, correlation,
                "correlation id of {id}"
            );
            assert_eq!(&m.payload[..], &payload[..], "payload of {id}");
            *seen.entry(id).or_insert(0) += 1;
        }
        let receipts: Vec<_> = batch.iter().map(|m| m.receipt().clone()).collect();
        let outcome = svc.delete_messages(queue, &receipts).await.unwrap();
        assert_eq!(outcome.deleted, batch.len());
    }
}

/// 10,000 messages in-memory -> target -> in-memory, every id accounted for each way.
pub async fn round_trip(label: &str, make_target: TargetFactory) {
    const N: usize = 10_000;
    let queue = unique_queue(label);
    let source = in_memory();
    let sent = seed(&*source, &queue, N).await;
    let target = make_target().await.unwrap();

    let mut progress: Vec<MigrationProgress> = Vec::new();
    let options = MigrationOptions {
        batch_size: 250,
        ..Default::default()
    };
    let report = migrate_queue(&*source, &*target, &queue, &options, |p| {
        progress.push(p.clone())
    })
    .await
    .unwrap();
    assert_eq!(report.moved, N as u64);
    assert_eq!(report.possible_duplicates, 0);
    assert_eq!(report.left_in_source, Some(0));
    assert_eq!(progress.len(), N / 250);
    assert!(progress.windows(2).all(|w| w[0].moved < w[1].moved));
    assert_eq!(progress.last().unwrap().initial_estimate, Some(N as u64));
    assert_eq!(source.get_queue_stats(&queue).await.unwrap().total(), 0);
    assert_eq!(
        target.get_queue_stats(&queue).await.unwrap().message_count,
        N as u64
    );

    // And back, into a fresh in-memory service.
    let back = in_memory();
    let report = migrate_queue(&*target, &*back, &queue, &options, |_| {})
        .await
        .unwrap();
    assert_eq!(report.moved, N as u64);
    assert_eq!(target.get_queue_stats(&queue).await.unwrap().total(), 0);

    let seen = drain(&*back, &queue, &sent).await;
    let missing: Vec<_> = sent.keys().filter(|id| !seen.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{} ids lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        seen.values().all(|&n| n == 1),
        "no duplicates without faults"
    );
    assert_eq!(seen.len(), N);
    target.delete_queue(&queue).await.unwrap();
}
