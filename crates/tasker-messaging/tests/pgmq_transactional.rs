//! Sending inside the caller's transaction: the message and the state change commit or roll
//! back together.

mod support;

use std::time::Duration;

use tasker_messaging::{MessagingService, OutgoingMessage};

async fn state_table(pool: &sqlx::PgPool) -> String {
    let table = format!("tasker_tx_state_{:08x}", rand::random::<u32>());
    sqlx::query(&format!(
        "CREATE TABLE {table} (step int PRIMARY KEY, state text NOT NULL)"
    ))
    .execute(pool)
    .await
    .unwrap();
    table
}

#[tokio::test]
async fn a_committed_transaction_delivers_its_message_with_the_state_change() {
    let Some(svc) = support::service().await else {
        return;
    };
    let queue = support::queue("tx_commit");
    svc.create_queue(&queue).await.unwrap();
    let pool = svc.pool().unwrap().clone();
    let table = state_table(&pool).await;

    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {table} VALUES (1, 'ready')"))
        .execute(&mut *tx)
        .await
        .unwrap();
    let id = svc
        .send_in_transaction(&mut tx, &queue, OutgoingMessage::new(r#"{"step":1}"#))
        .await
        .unwrap();
    let batch_ids = svc
        .send_batch_in_transaction(
            &mut tx,
            &queue,
            vec![OutgoingMessage::new("a"), OutgoingMessage::new("b")],
        )
        .await
        .unwrap();
    // Not visible to anyone before commit.
    assert!(svc
        .receive(&queue, 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    tx.commit().await.unwrap();

    let got = svc
        .receive(&queue, 10, Duration::from_secs(30))
        .await
        .unwrap();
    let ids: Vec<_> = got.iter().map(|m| m.metadata.message_id).collect();
    assert_eq!(ids, [vec![id], batch_ids].concat());
    assert_eq!(&got[0].payload[..], br#"{"step":1}"#);
    let state: String = sqlx::query_scalar(&format!("SELECT state FROM {table} WHERE step = 1"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(state, "ready");
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
    svc.delete_queue(&queue).await.unwrap();
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_neither_message_nor_state() {
    let Some(svc) = support::service().await else {
        return;
    };
    let queue = support::queue("tx_rollback");
    svc.create_queue(&queue).await.unwrap();
    let pool = svc.pool().unwrap().clone();
    let table = state_table(&pool).await;

    let mut tx = pool.begin().await.unwrap();
    sqlx::query(&format!("INSERT INTO {table} VALUES (1, 'ready')"))
        .execute(&mut *tx)
        .await
        .unwrap();
    svc.send_in_transaction(&mut tx, &queue, OutgoingMessage::new(r#"{"step":1}"#))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    assert!(svc
        .receive(&queue, 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(svc.get_queue_stats(&queue).await.unwrap().total(), 0);
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);

    // A transaction dropped without commit is a rollback too.
    {
        let mut tx = pool.begin().await.unwrap();
        svc.send_in_transaction(&mut tx, &queue, OutgoingMessage::new("x"))
            .await
            .unwrap();
    }
    assert_eq!(svc.get_queue_stats(&queue).await.unwrap().total(), 0);
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
    svc.delete_queue(&queue).await.unwrap();
}

#[tokio::test]
async fn a_transactional_send_to_a_missing_queue_is_a_typed_error() {
    let Some(svc) = support::service().await else {
        return;
    };
    let queue = support::queue("tx_missing");
    let pool = svc.pool().unwrap().clone();
    let mut tx = pool.begin().await.unwrap();
    let err = svc
        .send_in_transaction(&mut tx, &queue, OutgoingMessage::new("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, tasker_messaging::MessagingError::QueueNotFound { .. }),
        "{err:?}"
    );
}

/// A caller that holds the pool's every connection in transactions still sends: the queue is
/// looked up on the transaction's own connection, never on a second pooled one (with one
/// connection, a lookup on the pool would wait out the pool's acquire timeout).
#[tokio::test]
async fn a_send_in_a_transaction_needs_no_second_connection() {
    let Some(creator) = support::service().await else {
        return;
    };
    let queue = support::queue("tx_one_conn");
    creator.create_queue(&queue).await.unwrap();
    // A fresh service (nothing cached) whose pool has one connection.
    let Some(svc) = support::service_with(support::settings().with_pool_size(1)).await else {
        return;
    };
    let pool = svc.pool().unwrap().clone();
    let mut tx = pool.begin().await.unwrap();
    let sent = tokio::time::timeout(
        Duration::from_secs(5),
        svc.send_in_transaction(&mut tx, &queue, OutgoingMessage::new("one connection")),
    )
    .await
    .expect("the send waited for a second connection")
    .unwrap();
    tx.commit().await.unwrap();
    let got = creator
        .receive(&queue, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].metadata.message_id, sent);
    creator.delete_queue(&queue).await.unwrap();
}
