//! Hostile queue names never reach SQL: they are refused by `QueueName` with a typed error
//! before any statement exists, and the database is left as it was.

mod support;

use tasker_messaging::conformance::hostile_queue_names;
use tasker_messaging::{
    MessagingError, MessagingService, OutgoingMessage, QueueName, QueueOptions,
};

#[tokio::test]
async fn hostile_names_are_typed_errors_and_touch_nothing() {
    let Some(svc) = support::service().await else {
        return;
    };
    let pool = support::raw_pool().await;
    for bad in hostile_queue_names() {
        match QueueName::new(&bad) {
            Err(MessagingError::InvalidQueueName { .. }) => {}
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
        // The serde path (configuration, CLI JSON) refuses them too.
        let json = serde_json::to_string(&bad).unwrap();
        assert!(serde_json::from_str::<QueueName>(&json).is_err(), "{bad:?}");
    }
    // pgmq's catalog is intact and holds no relation outside the queue-name alphabet.
    let odd: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'pgmq' AND c.relname !~ '^[a-z0-9_]+$'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(odd, 0);
    let meta: bool = sqlx::query_scalar("SELECT to_regclass('pgmq.meta') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(meta);
    assert!(svc.health_check().await.unwrap().is_healthy());
}

#[tokio::test]
async fn the_longest_names_work_end_to_end_and_a_too_long_dead_letter_name_is_refused() {
    let Some(svc) = support::service().await else {
        return;
    };
    let tail = format!("{:08x}", rand::random::<u32>());
    // 47 characters: pgmq's limit. With max_receive_count 0 it needs no dead-letter queue.
    let longest = QueueName::new(format!("t{}{tail}", "x".repeat(38))).unwrap();
    assert_eq!(longest.as_str().len(), 47);
    svc.create_queue_with(&longest, &QueueOptions::with_max_receive_count(0))
        .await
        .unwrap();
    svc.send(&longest, OutgoingMessage::new("ok"))
        .await
        .unwrap();
    let got = svc
        .receive(&longest, 1, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(&got[0].payload[..], b"ok");
    svc.delete_message(&longest, got[0].receipt())
        .await
        .unwrap();
    svc.delete_queue(&longest).await.unwrap();

    // 44 characters + "_dlq" would be 48: refused before anything is created.
    let long = QueueName::new(format!("t{}{tail}", "y".repeat(35))).unwrap();
    let err = svc
        .create_queue_with(&long, &QueueOptions::with_max_receive_count(3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, MessagingError::InvalidQueueName { .. }),
        "{err:?}"
    );
    let err = svc
        .send(&long, OutgoingMessage::new("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, MessagingError::QueueNotFound { .. }),
        "{err:?}"
    );
}
