//! Receipts in batch deletes: a stale and a current receipt of the same message in one call.

mod support;

use std::time::Duration;

use tasker_messaging::{MessagingService, OutgoingMessage};

#[tokio::test]
async fn a_batch_with_a_stale_and_a_current_receipt_of_one_message_deletes_it() {
    let Some(svc) = support::service().await else {
        return;
    };
    let queue = support::queue("dup_receipts");
    svc.create_queue(&queue).await.unwrap();
    for stale_first in [true, false] {
        svc.send(&queue, OutgoingMessage::new(r#"{"n":1}"#))
            .await
            .unwrap();
        // A lease that ends, then the current one.
        let first = svc
            .receive(&queue, 1, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        let second = svc
            .receive(&queue, 1, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].metadata.receive_count, 2);
        let (stale, current) = (first[0].receipt().clone(), second[0].receipt().clone());
        let receipts = if stale_first {
            vec![stale.clone(), current.clone()]
        } else {
            vec![current.clone(), stale.clone()]
        };
        let outcome = svc.delete_messages(&queue, &receipts).await.unwrap();
        assert!(
            outcome.rejected.iter().all(|(r, _)| *r != current),
            "the current receipt was refused (stale first: {stale_first}): {:?}",
            outcome.rejected
        );
        assert_eq!(
            svc.get_queue_stats(&queue).await.unwrap().total(),
            0,
            "stale first: {stale_first}"
        );
    }
    // The stale receipt alone is refused while the message is leased anew.
    svc.send(&queue, OutgoingMessage::new(r#"{"n":2}"#))
        .await
        .unwrap();
    let first = svc
        .receive(&queue, 1, Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let second = svc
        .receive(&queue, 1, Duration::from_secs(30))
        .await
        .unwrap();
    let outcome = svc
        .delete_messages(&queue, &[first[0].receipt().clone()])
        .await
        .unwrap();
    assert_eq!(outcome.deleted, 0);
    assert_eq!(outcome.rejected.len(), 1);
    svc.delete_message(&queue, second[0].receipt())
        .await
        .unwrap();
    svc.delete_queue(&queue).await.unwrap();
}
