//! The PGMQ extensions reached through `MessagingService::pgmq()`.

mod support;

use std::time::Duration;

use tasker_messaging::{MessagingService, OutgoingMessage};

#[tokio::test]
async fn extensions_read_archive_and_report_metrics() {
    let Some(svc) = support::service().await else {
        return;
    };
    let pool = support::raw_pool().await;
    let ext = svc.pgmq().expect("declared pgmq_extensions");
    assert!(svc.capabilities().pgmq_extensions);
    let queue = support::queue("ext");
    ext.create_queue_with_vt(&queue, Duration::from_millis(1500))
        .await
        .unwrap();
    let messages = (0..5)
        .map(|i| OutgoingMessage::new(format!("{{\"i\":{i}}}")))
        .collect();
    svc.send_batch(&queue, messages).await.unwrap();

    // Zero takes the queue's default (1.5 s rounded up to 2 s, pgmq's whole seconds).
    let read = ext.read_batch(&queue, Duration::ZERO, 3).await.unwrap();
    assert_eq!(read.len(), 3);
    let lease = read[0].metadata.visibility_timeout_expires.unwrap() - read[0].metadata.enqueued_at;
    assert!(lease >= chrono::Duration::seconds(2), "{lease}");

    let metrics = ext.get_metrics(&queue).await.unwrap();
    assert_eq!(metrics["queue_name"], queue.as_str());
    assert_eq!(metrics["queue_length"], 5);
    assert_eq!(metrics["queue_visible_length"], 2);

    // Archive by pgmq message id: the pair receipt's first number.
    let ids: Vec<i64> = read
        .iter()
        .map(|m| m.receipt().as_pair().unwrap().0 as i64)
        .collect();
    assert_eq!(ext.archive_messages(&queue, &ids).await.unwrap(), 3);
    // The archive keeps our message ids (pgmq.archive alone would drop them).
    let mut archived: Vec<uuid::Uuid> = sqlx::query_scalar(&format!(
        "SELECT tasker_message_id FROM pgmq.a_{queue} ORDER BY msg_id"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut expected: Vec<uuid::Uuid> = read.iter().map(|m| m.metadata.message_id.0).collect();
    archived.sort();
    expected.sort();
    assert_eq!(archived, expected);
    assert_eq!(svc.get_queue_stats(&queue).await.unwrap().total(), 2);
    svc.delete_queue(&queue).await.unwrap();
}
