//! LISTEN/NOTIFY wakeups: one listener per service, and what happens when its connection is
//! killed (`pg_terminate_backend`): consumers keep receiving (bounded polling) and the listener
//! comes back.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tasker_messaging::{
    ConsumerExt, ConsumerOptions, MessagingService, MessagingServiceExt, OutgoingMessage,
    PgmqMessageService, QueueName,
};

/// Long enough that returning well before it proves a wakeup, not a timeout.
const LONG_WAIT: Duration = Duration::from_secs(30);

async fn woken_by_send(svc: &Arc<PgmqMessageService>, queue: &QueueName) -> Duration {
    // Drain any permit left by earlier notifications so the wait below is a real one.
    svc.wait_for_messages(queue, Duration::from_millis(50))
        .await;
    let waiter = {
        let (svc, queue) = (svc.clone(), queue.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            svc.wait_for_messages(&queue, LONG_WAIT).await;
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    svc.send(queue, OutgoingMessage::new("wake")).await.unwrap();
    waiter.await.unwrap()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_wakes_a_waiting_consumer_without_polling() {
    let Some(svc) = support::service().await else {
        return;
    };
    let svc = Arc::new(svc);
    let queue = support::queue("wakeup");
    svc.create_queue(&queue).await.unwrap();
    assert!(svc.capabilities().wakeup_notifications);
    assert!(svc.listener_connected());
    let waited = woken_by_send(&svc, &queue).await;
    assert!(
        waited < Duration::from_secs(5),
        "woken after {waited:?}, not by the send"
    );
    // One listener serves every queue: a second queue wakes through the same connection.
    let other = support::queue("wakeup2");
    svc.create_queue(&other).await.unwrap();
    let waited = woken_by_send(&svc, &other).await;
    assert!(waited < Duration::from_secs(5), "woken after {waited:?}");
    assert_eq!(svc.listener_connections(), 1);
    // A plain pgmq.send by another client wakes through the trigger.
    let pool = support::raw_pool().await;
    svc.wait_for_messages(&other, Duration::from_millis(50))
        .await;
    let started = Instant::now();
    let waiter = {
        let (svc, other) = (svc.clone(), other.clone());
        tokio::spawn(async move { svc.wait_for_messages(&other, LONG_WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    sqlx::query("SELECT pgmq.send($1, '{\"from\": \"sql\"}'::jsonb)")
        .bind(other.as_str())
        .execute(&pool)
        .await
        .unwrap();
    waiter.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));

    // With every message leased (nothing receivable), a send wakes waiters.
    let got = svc.receive(&queue, 10, LONG_WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    let waited = woken_by_send(&svc, &queue).await;
    assert!(waited < Duration::from_secs(5), "woken after {waited:?}");

    // Releasing a lease (visibility 0) wakes waiters too.
    svc.wait_for_messages(&queue, Duration::from_millis(50))
        .await;
    let waiter = {
        let (svc, queue) = (svc.clone(), queue.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            svc.wait_for_messages(&queue, LONG_WAIT).await;
            start.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    svc.change_message_visibility(&queue, got[0].receipt(), Duration::ZERO)
        .await
        .unwrap();
    assert!(waiter.await.unwrap() < Duration::from_secs(5));
    svc.delete_queue(&queue).await.unwrap();
    svc.delete_queue(&other).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_backend_is_terminated() {
    let Some(svc) = support::service().await else {
        return;
    };
    let svc = Arc::new(svc);
    let pool = support::raw_pool().await;
    let queue = support::queue("reconnect");
    svc.create_queue(&queue).await.unwrap();

    // A consumer stream running across the outage.
    let options = ConsumerOptions {
        batch_size: 10,
        visibility_timeout: LONG_WAIT,
        min_idle_backoff: Duration::from_millis(1),
        max_idle_backoff: Duration::from_millis(250),
    };
    let mut stream = svc.consume(&queue, options);

    let pid = svc.listener_backend_pid().expect("listener connected");
    let connections = svc.listener_connections();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(terminated);

    // Sent while the listener is down or reconnecting: the stream still gets it, by its
    // bounded idle polling if no notification reaches it.
    svc.send_message(&queue, &serde_json::json!({"during": "outage"}))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("message delivered during the outage")
        .unwrap()
        .unwrap();
    assert_eq!(
        first.decode::<serde_json::Value>().unwrap()["during"],
        "outage"
    );
    svc.delete_message(&queue, first.receipt()).await.unwrap();

    wait_until("the listener to reconnect", || {
        svc.listener_connections() > connections && svc.listener_connected()
    })
    .await;
    let new_pid = svc.listener_backend_pid().unwrap();
    assert_ne!(new_pid, pid);
    drop(stream);

    // Wakeups work again on the new connection.
    let waited = woken_by_send(&svc, &queue).await;
    assert!(waited < Duration::from_secs(5), "woken after {waited:?}");
    svc.delete_queue(&queue).await.unwrap();
}

#[tokio::test]
async fn wait_for_messages_is_bounded_even_without_notifications() {
    let Some(svc) = support::service().await else {
        return;
    };
    let queue = support::queue("bounded");
    svc.create_queue(&queue).await.unwrap();
    svc.shutdown().await.unwrap();
    // After shutdown there is no listener; a wait returns at once instead of hanging.
    let start = Instant::now();
    svc.wait_for_messages(&queue, LONG_WAIT).await;
    assert!(start.elapsed() < Duration::from_secs(1));
    let fresh = support::service().await.unwrap();
    let start = Instant::now();
    fresh
        .wait_for_messages(&queue, Duration::from_millis(300))
        .await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    fresh.delete_queue(&queue).await.unwrap();
}
