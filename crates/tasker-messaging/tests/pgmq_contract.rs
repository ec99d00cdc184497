//! PGMQ keeps the contract where its tables can disagree with a receipt or a statement
//! (issue 12, section "PGMQ"): a receipt of an earlier queue of the same name touches nothing,
//! a missing dead-letter table is reported as that queue, and messages over their receive
//! limit never empty a receive. (A dead-lettered message not reported as deleted is the
//! suite's C6.6.)

mod support;

use std::time::Duration;

use tasker_messaging::{MessagingError, MessagingService, OutgoingMessage, QueueOptions};

const LONG: Duration = Duration::from_secs(60);

fn batch(names: &[&str]) -> Vec<OutgoingMessage> {
    names
        .iter()
        .map(|n| OutgoingMessage::new(n.to_string()))
        .collect()
}

async fn sleep_past(lease: Duration) {
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_receipt_of_the_queue_before_it_was_created_again_touches_nothing() {
    let Some(svc) = support::service().await else {
        return;
    };
    let q = support::queue("reinc");
    svc.create_queue(&q).await.unwrap();
    svc.send(&q, OutgoingMessage::new("old")).await.unwrap();
    let old = svc.receive(&q, 1, LONG).await.unwrap();
    assert_eq!(old.len(), 1);
    svc.delete_queue(&q).await.unwrap();
    svc.create_queue(&q).await.unwrap();
    svc.send(&q, OutgoingMessage::new("new")).await.unwrap();
    let new = svc.receive(&q, 1, LONG).await.unwrap();
    assert_eq!(new.len(), 1);
    // Same msg id and receive count as the old receipt: only the incarnation differs.
    assert_eq!(
        old[0].receipt().as_pair().unwrap().0,
        new[0].receipt().as_pair().unwrap().0
    );
    match svc.delete_message(&q, old[0].receipt()).await {
        Err(MessagingError::InvalidReceipt { .. }) => {}
        other => panic!("delete with a receipt of the earlier queue: {other:?}"),
    }
    match svc
        .change_message_visibility(&q, old[0].receipt(), Duration::ZERO)
        .await
    {
        Err(MessagingError::InvalidReceipt { .. }) => {}
        other => panic!("change_message_visibility with an earlier receipt: {other:?}"),
    }
    assert_eq!(svc.get_queue_stats(&q).await.unwrap().total(), 1);
    svc.delete_message(&q, new[0].receipt()).await.unwrap();
    assert_eq!(svc.get_queue_stats(&q).await.unwrap().total(), 0);
    svc.delete_queue(&q).await.unwrap();
}

#[tokio::test]
async fn a_missing_dead_letter_table_is_reported_as_the_dead_letter_queue() {
    let Some(svc) = support::service().await else {
        return;
    };
    let pool = support::raw_pool().await;
    let q = support::queue("dlqgone");
    svc.create_queue_with(&q, &QueueOptions::with_max_receive_count(5))
        .await
        .unwrap();
    let dlq = svc.dead_letter_queue_name(&q).unwrap();
    svc.send(&q, OutgoingMessage::new("x")).await.unwrap();
    let got = svc.receive(&q, 1, LONG).await.unwrap();
    assert_eq!(got.len(), 1);
    // Dropped behind the service's back (its statements are cached with it).
    sqlx::query("SELECT pgmq.drop_queue($1)")
        .bind(dlq.as_str())
        .execute(&pool)
        .await
        .unwrap();
    match svc
        .dead_letter_message(&q, got[0].receipt(), "poison")
        .await
    {
        Err(MessagingError::QueueNotFound { queue }) => assert_eq!(queue, dlq.as_str()),
        other => panic!("dead-letter into a dropped DLQ: {other:?}"),
    }
    // The source queue is fine, and the next use makes the dead-letter queue again.
    assert_eq!(svc.get_queue_stats(&q).await.unwrap().total(), 1);
    svc.dead_letter_message(&q, got[0].receipt(), "poison")
        .await
        .unwrap();
    assert_eq!(svc.get_queue_stats(&dlq).await.unwrap().total(), 1);
    svc.delete_queue(&q).await.unwrap();
}

#[tokio::test]
async fn messages_over_their_limit_do_not_take_a_receives_places() {
    let Some(svc) = support::service().await else {
        return;
    };
    let pool = support::raw_pool().await;
    let q = support::queue("overslots");
    svc.create_queue_with(&q, &QueueOptions::with_max_receive_count(1))
        .await
        .unwrap();
    let dlq = svc.dead_letter_queue_name(&q).unwrap();
    // The move to the dead-letter queue fails until the trigger is dropped.
    let refuse = format!("refuse_{q}");
    sqlx::query(&format!(
        "CREATE FUNCTION public.{refuse}() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'dead-letter queue refuses inserts'; END $$"
    ))
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "CREATE TRIGGER {refuse} BEFORE INSERT ON pgmq.q_{dlq} \
         FOR EACH ROW EXECUTE FUNCTION public.{refuse}()"
    ))
    .execute(&pool)
    .await
    .unwrap();

    svc.send_batch(&q, batch(&["spent1", "spent2"]))
        .await
        .unwrap();
    let lease = Duration::from_millis(200);
    assert_eq!(svc.receive(&q, 2, lease).await.unwrap().len(), 2);
    sleep_past(lease).await;
    // The two spent messages come first in the queue and cannot move: every receive still
    // returns the receivable ones behind them.
    for round in ["a", "b"] {
        let names = [format!("fresh1{round}"), format!("fresh2{round}")];
        svc.send_batch(&q, batch(&[&names[0], &names[1]]))
            .await
            .unwrap();
        let got = svc.receive(&q, 2, LONG).await.unwrap();
        let payloads: Vec<&[u8]> = got.iter().map(|m| m.payload.as_ref()).collect();
        assert_eq!(payloads, [names[0].as_bytes(), names[1].as_bytes()]);
        let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
        assert_eq!(svc.delete_messages(&q, &receipts).await.unwrap().deleted, 2);
    }
    assert_eq!(svc.get_queue_stats(&dlq).await.unwrap().total(), 0);

    sqlx::query(&format!("DROP TRIGGER {refuse} ON pgmq.q_{dlq}"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!("DROP FUNCTION public.{refuse}()"))
        .execute(&pool)
        .await
        .unwrap();
    // Now the move works: both are over their limit and end in the dead-letter queue.
    assert!(svc.receive(&q, 10, LONG).await.unwrap().is_empty());
    assert_eq!(svc.get_queue_stats(&dlq).await.unwrap().total(), 2);
    svc.delete_queue(&q).await.unwrap();
}
