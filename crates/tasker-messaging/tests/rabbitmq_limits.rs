//! Receive limits and dead-lettering on RabbitMQ, across processes and broker versions:
//! the limit is stored with the queue (every service reads the same), quorum queues
//! dead-letter at least once, and a queue whose limit is disabled has none on the broker.

mod rabbitmq_support;

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use tasker_messaging::{
    MessagingService, OutgoingMessage, QueueName, QueueOptions, RabbitMqQueueType,
};

fn unique(tag: &str) -> QueueName {
    let n = uuid::Uuid::new_v4().simple().to_string();
    QueueName::new(format!("{tag}_{}", &n[..12])).unwrap()
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

/// Declares `queue` with `args` on a raw connection; `Err(reply text)` when the broker refuses.
async fn declare_raw(queue: &str, args: FieldTable) -> Result<(), String> {
    let conn = lapin::Connection::connect(
        &rabbitmq_support::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("raw lapin connects");
    let ch = conn.create_channel().await.expect("channel");
    let r = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let _ = conn.close(200, "done".into()).await;
    r
}

/// Two worker processes (two service instances, two connections): the one that did not create
/// the classic queue enforces the creator's `max_receive_count` (2), not its own default (5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_enforces_the_limit_stored_with_a_classic_queue() {
    let mut settings = rabbitmq_support::settings();
    settings.queue_type = RabbitMqQueueType::Classic;
    settings.default_max_receive_count = 5;
    let Some(creator) = rabbitmq_support::service_with(settings.clone()).await else {
        return;
    };
    let Some(worker) = rabbitmq_support::service_with(settings).await else {
        return;
    };
    let q = unique("limit_xproc");
    creator
        .create_queue_with(&q, &QueueOptions::with_max_receive_count(2))
        .await
        .unwrap();
    let out = OutgoingMessage::new("poison");
    worker.send(&q, out.clone()).await.unwrap();
    for n in 1..=2 {
        let got = worker
            .receive(&q, 1, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "receive {n}");
        assert_eq!(got[0].metadata.receive_count, n);
        worker
            .change_message_visibility(&q, got[0].receipt(), Duration::ZERO)
            .await
            .unwrap();
    }
    // The worker released it the second time: at the creator's limit it went to the DLQ.
    let again = worker
        .receive(&q, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        again.is_empty(),
        "delivered a third time: the worker used its own default limit"
    );
    let dlq = worker.dead_letter_queue_name(&q).unwrap();
    let dead = worker
        .receive(&dlq, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].metadata.message_id, out.message_id);
    let info = dead[0].metadata.dead_letter.as_deref().unwrap();
    assert_eq!(info.receive_count, 2);
    worker
        .delete_message(&dlq, dead[0].receipt())
        .await
        .unwrap();

    // A queue created with the limit disabled: another process never dead-letters it.
    let open = unique("limit_off");
    creator
        .create_queue_with(&open, &QueueOptions::with_max_receive_count(0))
        .await
        .unwrap();
    worker.send(&open, OutgoingMessage::new("x")).await.unwrap();
    for n in 1..=6 {
        let got = worker
            .receive(&open, 1, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "receive {n} of a queue without a limit");
        worker
            .change_message_visibility(&open, got[0].receipt(), Duration::ZERO)
            .await
            .unwrap();
    }
    creator.delete_queue(&q).await.unwrap();
    creator.delete_queue(&open).await.unwrap();
}

/// A quorum queue with a limit dead-letters at least once: the broker holds the queue with
/// `x-dead-letter-strategy: at-least-once` and `x-overflow: reject-publish` (a re-declaration
/// without them is refused as inequivalent), and the dead-lettering still works (C6.1 checks
/// the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queues_dead_letter_at_least_once() {
    let Some(svc) = rabbitmq_support::service().await else {
        return;
    };
    let q = unique("limit_alo");
    svc.create_queue_with(&q, &QueueOptions::with_max_receive_count(2))
        .await
        .unwrap();
    let mut without = FieldTable::default();
    without.insert("x-queue-type".into(), s("quorum"));
    without.insert("x-dead-letter-exchange".into(), s("tasker.dead_letter"));
    without.insert("x-dead-letter-routing-key".into(), s(&format!("{q}.2")));
    without.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(1));
    let refused = declare_raw(q.as_str(), without.clone()).await.unwrap_err();
    assert!(
        refused.contains("x-dead-letter-strategy"),
        "the queue was declared without at-least-once dead-lettering: {refused}"
    );
    let mut with = without;
    with.insert("x-dead-letter-strategy".into(), s("at-least-once"));
    with.insert("x-overflow".into(), s("reject-publish"));
    declare_raw(q.as_str(), with)
        .await
        .expect("the queue carries exactly these arguments");
    // Creating it again (another process at start-up) is still fine.
    svc.create_queue_with(&q, &QueueOptions::with_max_receive_count(2))
        .await
        .unwrap();

    svc.send(&q, OutgoingMessage::new("poison")).await.unwrap();
    for _ in 0..2 {
        let got = svc.receive(&q, 1, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got.len(), 1);
        svc.change_message_visibility(&q, got[0].receipt(), Duration::ZERO)
            .await
            .unwrap();
    }
    let dlq = svc.dead_letter_queue_name(&q).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let got = svc.receive(&dlq, 1, Duration::from_secs(30)).await.unwrap();
        if !got.is_empty() || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1, "the broker dead-lettered the message");
    svc.delete_message(&dlq, dead[0].receipt()).await.unwrap();
    svc.delete_queue(&q).await.unwrap();
}

/// An existing queue declared by an earlier release (quorum, with a limit but at-most-once
/// dead-lettering) still works: `create_queue` keeps it as it is (the broker refuses the new
/// arguments as inequivalent; the first creation's options stay) and its limit is enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_declared_by_an_earlier_release_keep_working() {
    let Some(fresh) = rabbitmq_support::service().await else {
        return;
    };
    let q = unique("limit_old");
    // What the previous release declared: the queue with a limit but no strategy.
    let mut old = FieldTable::default();
    old.insert("x-queue-type".into(), s("quorum"));
    old.insert("x-dead-letter-exchange".into(), s("tasker.dead_letter"));
    old.insert("x-dead-letter-routing-key".into(), s(&format!("{q}.2")));
    old.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(1));
    declare_raw(q.as_str(), old).await.unwrap();
    // A new service starts against it: create_queue succeeds and keeps the queue.
    fresh
        .create_queue_with(&q, &QueueOptions::with_max_receive_count(2))
        .await
        .unwrap();
    fresh.send(&q, OutgoingMessage::new("old")).await.unwrap();
    let got = fresh.receive(&q, 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(got.len(), 1);
    fresh.delete_message(&q, got[0].receipt()).await.unwrap();
    fresh.delete_queue(&q).await.unwrap();
}
