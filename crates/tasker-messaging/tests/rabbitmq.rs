//! RabbitMQ-specific behaviour against the machine's broker: AMQP routing (the plan's
//! Example 3), the push consumer, recovery after the broker closes our connection, classic
//! queues, and secrets.

mod rabbitmq_support;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tasker_messaging::{
    ConsumerExt, ConsumerOptions, ExchangeKind, MessageId, MessagingError, MessagingService,
    MessagingServiceExt, OutgoingMessage, QueueName, RabbitMqQueueType, RabbitMqSettings,
    StepMessage,
};

fn unique(tag: &str) -> QueueName {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    QueueName::new(format!("rt_{tag}_{suffix}")).unwrap()
}

/// Closes the broker's connections whose client properties carry `name`, as an operator's
/// `rabbitmqctl close_all_connections` would (only ours, so other users of the broker are
/// not disturbed). Returns how many were closed.
fn close_connections_named(name: &str) -> usize {
    let list = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        list.status.success(),
        "rabbitmqctl list_connections failed: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    let mut closed = 0;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        if !line.contains(name) {
            continue;
        }
        let pid = line.split_whitespace().next().unwrap_or_default();
        let status = Command::new("rabbitmqctl")
            .args(["close_connection", pid, "recovery test"])
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "close_connection {pid} failed");
        closed += 1;
    }
    closed
}

fn named_settings(tag: &str) -> (RabbitMqSettings, String) {
    let name = format!("tasker-test-{tag}-{}", uuid::Uuid::new_v4().simple());
    let mut s = rabbitmq_support::settings();
    s.connection_name = name.clone();
    (s, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_exchange_routes_order_and_inventory_events() {
    let Some(svc) = rabbitmq_support::service().await else {
        return;
    };
    let amqp = svc.amqp().expect("RabbitMQ has the AMQP extensions");
    let exchange = format!("workflow_events_{}", uuid::Uuid::new_v4().simple());
    amqp.declare_exchange(&exchange, ExchangeKind::Topic, true)
        .await
        .unwrap();
    let orders = unique("order_events");
    let inventory = unique("inventory_events");
    svc.create_queue(&orders).await.unwrap();
    svc.create_queue(&inventory).await.unwrap();
    amqp.bind_queue(&orders, &exchange, "order.*")
        .await
        .unwrap();
    amqp.bind_queue(&inventory, &exchange, "inventory.*")
        .await
        .unwrap();

    let created =
        OutgoingMessage::json(&serde_json::json!({"order": 17, "event": "created"})).unwrap();
    let created_id = amqp
        .publish_to_exchange(&exchange, "order.created", created)
        .await
        .unwrap();
    let reserved = amqp
        .publish_to_exchange(
            &exchange,
            "inventory.reserved",
            OutgoingMessage::new("sku-9"),
        )
        .await
        .unwrap();
    // Matches no binding: confirmed, routed nowhere.
    amqp.publish_to_exchange(&exchange, "billing.charged", OutgoingMessage::new("x"))
        .await
        .unwrap();

    let got_orders = svc
        .receive(&orders, 10, Duration::from_secs(30))
        .await
        .unwrap();
    let got_inventory = svc
        .receive(&inventory, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        got_orders
            .iter()
            .map(|m| m.metadata.message_id)
            .collect::<Vec<_>>(),
        vec![created_id]
    );
    assert_eq!(
        got_inventory
            .iter()
            .map(|m| m.metadata.message_id)
            .collect::<Vec<_>>(),
        vec![reserved]
    );
    assert_eq!(&got_inventory[0].payload[..], b"sku-9");
    for (q, m) in [(&orders, &got_orders[0]), (&inventory, &got_inventory[0])] {
        svc.delete_message(q, m.receipt()).await.unwrap();
    }
    svc.delete_queue(&orders).await.unwrap();
    svc.delete_queue(&inventory).await.unwrap();
    rabbitmq_support::delete_exchange(&exchange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_stream_is_native_and_acks_in_batches() {
    let Some(svc) = rabbitmq_support::service().await else {
        return;
    };
    let q = unique("push");
    svc.create_queue(&q).await.unwrap();
    let sent: HashSet<MessageId> = svc
        .send_messages(
            &q,
            &(0..300).map(|_| StepMessage::random()).collect::<Vec<_>>(),
        )
        .await
        .unwrap()
        .into_iter()
        .collect();
    let amqp = svc.amqp().unwrap();
    let mut stream = amqp
        .create_consumer_stream(&q, &ConsumerOptions::default())
        .await
        .unwrap();
    let mut seen = HashSet::new();
    let mut receipts = Vec::new();
    while seen.len() < sent.len() {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream delivers")
            .expect("the stream is open")
            .unwrap();
        assert_eq!(m.metadata.receive_count, 1);
        seen.insert(m.metadata.message_id);
        receipts.push(m.receipt().clone());
        if receipts.len() == 50 {
            let outcome = svc.delete_messages(&q, &receipts).await.unwrap();
            assert_eq!(outcome.deleted, 50, "{:?}", outcome.rejected);
            receipts.clear();
        }
    }
    assert_eq!(seen, sent);
    drop(stream);
    // Nothing left, nothing held: after the leases would have ended, still empty.
    let stats = svc.get_queue_stats(&q).await.unwrap();
    assert_eq!(stats.message_count, 0, "{stats:?}");
    assert_eq!(stats.in_flight_count, Some(0), "{stats:?}");
    svc.delete_queue(&q).await.unwrap();
}

/// N messages in flight across a connection kill: the push stream reconnects and
/// resubscribes by itself, unacked messages come back, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_stream_recovers_after_the_broker_closes_the_connection() {
    const N: usize = 400;
    let (settings, name) = named_settings("stream");
    let Some(svc) = rabbitmq_support::service_with(settings).await else {
        return;
    };
    let q = unique("recover_stream");
    svc.create_queue(&q).await.unwrap();

    // A producer that keeps sending across the kill, retrying what fails transiently.
    let producer = {
        let (svc, q) = (svc.clone(), q.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..N {
                let out = OutgoingMessage::new(format!("m{i}"));
                loop {
                    match svc.send(&q, out.clone()).await {
                        Ok(id) => {
                            ids.push(id);
                            break;
                        }
                        Err(e) if e.is_retryable() => {
                            tokio::time::sleep(Duration::from_millis(50)).await
                        }
                        Err(e) => panic!("send failed permanently: {e}"),
                    }
                }
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            ids
        })
    };

    let options = ConsumerOptions {
        batch_size: 20,
        visibility_timeout: Duration::from_secs(60),
        ..ConsumerOptions::default()
    };
    let mut stream = svc.consume(&q, options);
    let mut seen = HashSet::new();
    let mut held = Vec::new();
    let mut killed_at = None;
    let mut after_kill = 0usize;
    let mut stale_refused = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} delivered",
            seen.len()
        );
        let item = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the stream resumed by itself")
            .expect("the stream stays open");
        let m = match item {
            Ok(m) => m,
            // Reconnecting: the contract yields retryable errors and goes on.
            Err(e) if e.is_retryable() => continue,
            Err(e) => panic!("permanent stream error: {e}"),
        };
        seen.insert(m.metadata.message_id);
        if killed_at.is_some() {
            after_kill += 1;
        }
        held.push(m);
        if killed_at.is_none() && held.len() == 60 {
            // 60 unacked leases are in flight: kill the connection under them.
            assert!(
                close_connections_named(&name) >= 1,
                "no connection to close"
            );
            killed_at = Some(Instant::now());
            // Their receipts died with the channel: refused, never silently "deleted".
            let receipts: Vec<_> = held.iter().map(|m| m.receipt().clone()).collect();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let outcome = svc.delete_messages(&q, &receipts).await.unwrap();
            stale_refused = outcome.rejected.len();
            held.clear();
            continue;
        }
        if killed_at.is_some() && held.len() >= 25 {
            let receipts: Vec<_> = held.drain(..).map(|m| m.receipt().clone()).collect();
            let outcome = svc.delete_messages(&q, &receipts).await.unwrap();
            // Only a lease lost with its connection may be refused (it is redelivered).
            assert!(
                outcome
                    .rejected
                    .iter()
                    .all(|(_, e)| matches!(e, MessagingError::InvalidReceipt { .. })),
                "{:?}",
                outcome.rejected
            );
        }
    }
    let receipts: Vec<_> = held.drain(..).map(|m| m.receipt().clone()).collect();
    svc.delete_messages(&q, &receipts).await.unwrap();
    let sent: HashSet<_> = producer.await.unwrap().into_iter().collect();
    assert_eq!(sent.len(), N);
    assert!(killed_at.is_some());
    assert!(after_kill > 0, "the stream never delivered after the kill");
    assert_eq!(
        stale_refused, 60,
        "receipts of the dead connection must be refused"
    );
    assert_eq!(seen, sent, "a message was lost across the connection kill");
    drop(stream);
    let stats = svc.get_queue_stats(&q).await.unwrap();
    assert_eq!(stats.message_count, 0, "{stats:?}");
    svc.delete_queue(&q).await.unwrap();
}

/// Pull receivers recover too: leases held when the connection dies come back (counted),
/// and the same service goes on without being rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_recovers_after_the_broker_closes_the_connection() {
    let (settings, name) = named_settings("pull");
    let Some(svc) = rabbitmq_support::service_with(settings).await else {
        return;
    };
    let q = unique("recover_pull");
    svc.create_queue(&q).await.unwrap();
    let ids = svc
        .send_batch(
            &q,
            (0..10)
                .map(|i| OutgoingMessage::new(format!("{i}")))
                .collect(),
        )
        .await
        .unwrap();
    let held = svc.receive(&q, 10, Duration::from_secs(300)).await.unwrap();
    assert_eq!(held.len(), 10);
    assert!(close_connections_named(&name) >= 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = svc.delete_message(&q, held[0].receipt()).await.unwrap_err();
    assert!(
        matches!(err, MessagingError::InvalidReceipt { .. }),
        "{err:?}"
    );
    let mut back = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while back.len() < 10 && Instant::now() < deadline {
        match svc.receive(&q, 10, Duration::from_secs(300)).await {
            Ok(got) => back.extend(got),
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut back_ids: Vec<_> = back.iter().map(|m| m.metadata.message_id).collect();
    back_ids.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(back_ids, expected);
    assert!(back.iter().all(|m| m.metadata.receive_count == 2));
    let receipts: Vec<_> = back.iter().map(|m| m.receipt().clone()).collect();
    assert_eq!(
        svc.delete_messages(&q, &receipts).await.unwrap().deleted,
        10
    );
    svc.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_a_connection_error_without_the_password() {
    if rabbitmq_support::service().await.is_none() {
        return;
    }
    let mut s = RabbitMqSettings::new("amqp://guest:S3cretWrong@127.0.0.1:5672/%2f");
    s.connection_timeout = Duration::from_secs(5);
    let svc = tasker_messaging::RabbitMqMessageService::new(s).unwrap();
    let err = svc.initialize().await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("S3cretWrong"), "{shown}");
    let health = svc.health_check().await.unwrap();
    assert!(!health.is_healthy());
    assert!(!format!("{health:?}").contains("S3cretWrong"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queues_keep_the_contract_basics() {
    let mut s = rabbitmq_support::settings();
    s.queue_type = RabbitMqQueueType::Classic;
    let Some(svc) = rabbitmq_support::service_with(s).await else {
        return;
    };
    let q = unique("classic");
    svc.create_queue(&q).await.unwrap();
    let id = svc.send(&q, OutgoingMessage::new("c")).await.unwrap();
    let first = svc.receive(&q, 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].metadata.receive_count, 1);
    svc.change_message_visibility(&q, first[0].receipt(), Duration::ZERO)
        .await
        .unwrap();
    let again = svc.receive(&q, 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].metadata.message_id, id);
    assert_eq!(again[0].metadata.receive_count, 2);
    // A lease that runs out also counts (the provider's own header on classic queues).
    let lease = Duration::from_millis(300);
    svc.change_message_visibility(&q, again[0].receipt(), lease)
        .await
        .unwrap();
    let mut third = Vec::new();
    while third.is_empty() {
        third = svc.receive(&q, 10, Duration::from_secs(30)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(third[0].metadata.message_id, id);
    assert_eq!(third[0].metadata.receive_count, 3);
    svc.delete_message(&q, third[0].receipt()).await.unwrap();
    svc.delete_queue(&q).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_service_keeps_its_leases_until_they_end() {
    let Some(svc) = rabbitmq_support::service().await else {
        return;
    };
    let q = unique("orphan");
    svc.create_queue(&q).await.unwrap();
    svc.send(&q, OutgoingMessage::new("x")).await.unwrap();
    let holder = rabbitmq_support::service().await.unwrap();
    let got = holder
        .receive(&q, 1, Duration::from_millis(800))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let leased_at = Instant::now();
    drop(holder);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        svc.receive(&q, 1, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "dropping the holder ended its lease early"
    );
    let mut back = Vec::new();
    while back.is_empty() {
        assert!(leased_at.elapsed() < Duration::from_secs(10));
        back = svc.receive(&q, 1, Duration::from_secs(30)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(leased_at.elapsed() >= Duration::from_millis(750));
    assert_eq!(back[0].metadata.receive_count, 2);
    svc.delete_message(&q, back[0].receipt()).await.unwrap();
    svc.delete_queue(&q).await.unwrap();
    let _ = Arc::strong_count(&svc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_delayed_messages_too() {
    let Some(svc) = rabbitmq_support::service().await else {
        return;
    };
    let q = unique("purge_delay");
    svc.create_queue(&q).await.unwrap();
    svc.send_batch(
        &q,
        vec![OutgoingMessage::new("a"), OutgoingMessage::new("b")],
    )
    .await
    .unwrap();
    svc.send(
        &q,
        OutgoingMessage::new("later").with_delay(Duration::from_millis(1500)),
    )
    .await
    .unwrap();
    assert_eq!(svc.purge_queue(&q).await.unwrap(), 3);
    // The delayed one does not arrive after its delay either.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(svc
        .receive(&q, 10, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    svc.delete_queue(&q).await.unwrap();
}

/// `max_receive_count` 1 is a delivery limit of 0 on a quorum queue: the first lease that
/// runs out dead-letters the message, intact, with the limit it hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_receive_count_one_dead_letters_on_the_first_expiry() {
    let Some(svc) = rabbitmq_support::service().await else {
        return;
    };
    let q = unique("mrc1");
    svc.create_queue_with(
        &q,
        &tasker_messaging::QueueOptions::with_max_receive_count(1),
    )
    .await
    .unwrap();
    let id = svc.send(&q, OutgoingMessage::new("once")).await.unwrap();
    let got = svc
        .receive(&q, 1, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let dlq = svc.dead_letter_queue_name(&q).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        assert!(
            svc.receive(&q, 1, Duration::from_secs(30))
                .await
                .unwrap()
                .is_empty(),
            "delivered again past max_receive_count 1"
        );
        let d = svc.receive(&dlq, 1, Duration::from_secs(30)).await.unwrap();
        if let Some(m) = d.into_iter().next() {
            break m;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.metadata.message_id, id);
    assert_eq!(&dead.payload[..], b"once");
    let info = dead.metadata.dead_letter.as_deref().unwrap();
    assert_eq!(info.source_queue, q);
    assert_eq!(info.receive_count, 1);
    assert_eq!(
        info.reason,
        tasker_messaging::DeadLetterReason::MaxReceiveCountExceeded {
            max_receive_count: 1
        }
    );
    svc.delete_message(&dlq, dead.receipt()).await.unwrap();
    svc.delete_queue(&q).await.unwrap();
}

/// Classic queues count nothing themselves: the provider's count header carries the receive
/// count and the provider dead-letters at the limit, with the same record as the broker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queue_dead_letters_at_max_receive_count() {
    let mut s = rabbitmq_support::settings();
    s.queue_type = RabbitMqQueueType::Classic;
    let Some(svc) = rabbitmq_support::service_with(s).await else {
        return;
    };
    let q = unique("classic_mrc");
    svc.create_queue_with(
        &q,
        &tasker_messaging::QueueOptions::with_max_receive_count(2),
    )
    .await
    .unwrap();
    let out =
        OutgoingMessage::new("poison").with_correlation_id(tasker_messaging::CorrelationId::new());
    svc.send(&q, out.clone()).await.unwrap();
    for n in 1..=2 {
        let got = svc.receive(&q, 1, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got.len(), 1, "receive {n}");
        assert_eq!(got[0].metadata.receive_count, n);
        svc.change_message_visibility(&q, got[0].receipt(), Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(svc
        .receive(&q, 1, Duration::from_secs(30))
        .await
        .unwrap()
        .is_empty());
    let dlq = svc.dead_letter_queue_name(&q).unwrap();
    let dead = svc.receive(&dlq, 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].metadata.message_id, out.message_id);
    assert_eq!(dead[0].metadata.correlation_id, out.correlation_id);
    let info = dead[0].metadata.dead_letter.as_deref().unwrap();
    assert_eq!(
        (info.source_queue.clone(), info.receive_count),
        (q.clone(), 2)
    );
    svc.change_message_visibility(&dlq, dead[0].receipt(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(svc.redrive_dead_letters(&q, 10).await.unwrap(), 1);
    let back = svc.receive(&q, 1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(back[0].metadata.receive_count, 1);
    assert!(back[0].metadata.dead_letter.is_none());
    svc.delete_message(&q, back[0].receipt()).await.unwrap();
    svc.delete_queue(&q).await.unwrap();
}

/// A wait takes the first message that arrives and keeps it, leased, for this service's next
/// receive; other receivers do not get it meanwhile, and when no receive claims it, it comes
/// back after the default visibility timeout, not counted (nobody saw it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_keeps_the_message_for_the_next_receive_and_releases_it_unclaimed() {
    let mut settings = rabbitmq_support::settings();
    settings.default_visibility_timeout = Duration::from_secs(1);
    let Some(waiting) = rabbitmq_support::service_with(settings).await else {
        return;
    };
    let Some(other) = rabbitmq_support::service().await else {
        return;
    };
    let q = unique("waitkeep");
    waiting.create_queue(&q).await.unwrap();

    // Claimed: the waiting service's receive gets it, as its first delivery.
    let wait = {
        let (svc, q) = (waiting.clone(), q.clone());
        tokio::spawn(async move { svc.wait_for_messages(&q, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first = other.send(&q, OutgoingMessage::new("first")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("the wait wakes on the send")
        .unwrap();
    assert!(
        other
            .receive(&q, 10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "a kept message is leased to the waiting service"
    );
    let got = waiting
        .receive(&q, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].metadata.message_id, first);
    assert_eq!(got[0].metadata.receive_count, 1);
    assert!(got[0].metadata.visibility_timeout_expires.is_some());
    waiting.delete_message(&q, got[0].receipt()).await.unwrap();

    // Unclaimed: back after the default visibility timeout (1 s here), not counted (nobody
    // saw it: conformance C16).
    let second = other
        .send(&q, OutgoingMessage::new("second"))
        .await
        .unwrap();
    let started = Instant::now();
    waiting.wait_for_messages(&q, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a ready message ends the wait"
    );
    let back = loop {
        let got = other
            .receive(&q, 10, Duration::from_secs(30))
            .await
            .unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the unclaimed message did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "came back after {:?}, before its lease ended",
        started.elapsed()
    );
    assert_eq!(back[0].metadata.message_id, second);
    assert_eq!(back[0].metadata.receive_count, 1);
    other.delete_message(&q, back[0].receipt()).await.unwrap();
    waiting.delete_queue(&q).await.unwrap();
}

/// Several tasks waiting on one queue share one subscription: one send wakes one of them (not
/// all into an empty receive), and the queue stays watched for the others: a second send wakes
/// another. Each message is received once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_waits_share_one_subscription_and_each_send_wakes_one() {
    let Some(svc) = rabbitmq_support::service().await else {
        return;
    };
    let Some(other) = rabbitmq_support::service().await else {
        return;
    };
    let q = unique("waitmany");
    svc.create_queue(&q).await.unwrap();
    let mut waits: Vec<_> = (0..4)
        .map(|_| {
            let (svc, q) = (svc.clone(), q.clone());
            tokio::spawn(async move { svc.wait_for_messages(&q, Duration::from_secs(30)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waits.iter().all(|w| !w.is_finished()),
        "nothing was sent yet"
    );
    for round in 0..2 {
        let id = other.send(&q, OutgoingMessage::new("one")).await.unwrap();
        let sent = Instant::now();
        while waits.iter().all(|w| !w.is_finished()) {
            assert!(
                sent.elapsed() < Duration::from_secs(5),
                "round {round}: no waiter woke on the send"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (woke, still): (Vec<_>, Vec<_>) = waits.into_iter().partition(|w| w.is_finished());
        assert_eq!(woke.len(), 1, "round {round}: one send woke {}", woke.len());
        waits = still;
        let got = svc.receive(&q, 10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got.len(), 1, "round {round}");
        assert_eq!(got[0].metadata.message_id, id);
        assert_eq!(got[0].metadata.receive_count, 1);
        svc.delete_message(&q, got[0].receipt()).await.unwrap();
    }
    for w in waits {
        w.abort();
    }
    svc.delete_queue(&q).await.unwrap();
}

/// A caller that gives up on a wait (a timeout around it) leaves no subscription behind that
/// could sit on a message: what arrives during the wait's time is kept for this service, and
/// after it other receivers get new messages at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_leaves_no_subscription_holding_messages() {
    let Some(svc) = rabbitmq_support::service().await else {
        return;
    };
    let Some(other) = rabbitmq_support::service().await else {
        return;
    };
    let q = unique("waitcancel");
    svc.create_queue(&q).await.unwrap();
    let wait_for = Duration::from_secs(2);
    let started = Instant::now();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        svc.wait_for_messages(&q, wait_for),
    )
    .await;
    assert!(gave_up.is_err(), "the wait was still waiting");
    // Within the wait's time the watch still runs: what arrives is kept for this service
    // (leased, so no other receiver gets it), and this service receives it.
    let first = other
        .send(&q, OutgoingMessage::new("during"))
        .await
        .unwrap();
    assert!(
        other
            .receive(&q, 10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty(),
        "the watch stopped with its caller"
    );
    let got = loop {
        let got = svc.receive(&q, 10, Duration::from_secs(30)).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the message was lost"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got[0].metadata.message_id, first);
    assert_eq!(got[0].metadata.receive_count, 1);
    svc.delete_message(&q, got[0].receipt()).await.unwrap();
    // After the wait's time nothing of it subscribes: another service gets the next message.
    tokio::time::sleep(wait_for.saturating_sub(started.elapsed()) + Duration::from_millis(300))
        .await;
    let second = other.send(&q, OutgoingMessage::new("after")).await.unwrap();
    let got = other
        .receive(&q, 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        1,
        "a message sat with a subscription nobody reads"
    );
    assert_eq!(got[0].metadata.message_id, second);
    other.delete_message(&q, got[0].receipt()).await.unwrap();
    svc.delete_queue(&q).await.unwrap();
}

/// `health_check` reports the ready messages of the queues this service declared (it said 0
/// whatever the queues held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_the_depth_of_declared_queues() {
    let Some(svc) = rabbitmq_support::service().await else {
        return;
    };
    let q = unique("depth");
    svc.create_queue(&q).await.unwrap();
    for i in 0..3 {
        svc.send(&q, OutgoingMessage::new(format!("m{i}")))
            .await
            .unwrap();
    }
    match svc.health_check().await.unwrap() {
        tasker_messaging::MessagingHealth::Healthy { queue_depth, .. } => {
            assert_eq!(
                queue_depth, 3,
                "three ready messages in the one declared queue"
            )
        }
        other => panic!("not healthy: {other:?}"),
    }
    svc.delete_queue(&q).await.unwrap();
}
