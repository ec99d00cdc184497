//! On the shared three-node cluster (4231-4233, `scripts/services/nats.sh`), with streams of
//! three replicas: when `delete_messages` (or `delete_message`, or `dead_letter_message`)
//! returns, the stats no longer count the deleted messages (issue 16: the server answers an
//! ack before the replicated work-queue stream has removed the message; the provider confirms
//! the removal). Many rounds, since the gap it closes lasted only milliseconds.

mod nats_support;

use std::time::{Duration, Instant};

use tasker_messaging::{MessagingService, NatsSettings, OutgoingMessage, QueueOptions};

const ROUNDS: usize = 40;
const BATCH: usize = 20;
const LEASE: Duration = Duration::from_secs(60);

fn cluster_settings() -> NatsSettings {
    NatsSettings::new(nats_support::cluster_url())
        .with_connection_timeout(Duration::from_secs(3))
        .with_replicas(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_right_after_a_delete_on_a_replicated_stream_do_not_count_it() {
    let Some(svc) = nats_support::service_with(cluster_settings()).await else {
        return;
    };
    let q = nats_support::queue("cldel");
    let dlq = svc.dead_letter_queue_name(&q).expect("a DLQ name");
    svc.create_queue_with(&q, &QueueOptions::with_max_receive_count(5))
        .await
        .expect("create a replicated queue");
    let mut took = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let batch = (0..BATCH)
            .map(|i| OutgoingMessage::new(format!("r{round} m{i}")))
            .collect();
        svc.send_batch(&q, batch).await.expect("send_batch");
        // A receive may come before the consumer leader's copy of the stream has the
        // messages (receive returns at once, possibly empty): wait for them, bounded.
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < BATCH {
            assert!(
                Instant::now() < deadline,
                "round {round}: {} of {BATCH} sent messages received in 10 s",
                got.len()
            );
            let more = svc
                .receive(&q, BATCH - got.len(), LEASE)
                .await
                .expect("receive");
            if more.is_empty() {
                svc.wait_for_messages(&q, Duration::from_millis(50)).await;
            }
            got.extend(more);
        }
        // All but two in one batch delete, one alone, one dead-lettered.
        let receipts: Vec<_> = got[2..].iter().map(|m| m.receipt().clone()).collect();
        let t = Instant::now();
        let outcome = svc
            .delete_messages(&q, &receipts)
            .await
            .expect("delete_messages");
        took.push(t.elapsed());
        assert_eq!(outcome.deleted, BATCH - 2, "round {round}: {outcome:?}");
        let stats = svc.get_queue_stats(&q).await.expect("stats");
        assert_eq!(
            stats.total(),
            2,
            "round {round}, after the batch delete: {stats:?}"
        );
        svc.delete_message(&q, got[0].receipt())
            .await
            .expect("delete_message");
        let stats = svc.get_queue_stats(&q).await.expect("stats");
        assert_eq!(
            stats.total(),
            1,
            "round {round}, after the single delete: {stats:?}"
        );
        svc.dead_letter_message(&q, got[1].receipt(), "test")
            .await
            .expect("dead_letter_message");
        let stats = svc.get_queue_stats(&q).await.expect("stats");
        assert_eq!(
            stats.total(),
            0,
            "round {round}, after dead-lettering: {stats:?}"
        );
    }
    let dead = svc.get_queue_stats(&dlq).await.expect("DLQ stats");
    assert_eq!(dead.total(), ROUNDS as u64, "{dead:?}");
    took.sort();
    eprintln!(
        "delete_messages of {} on 3 replicas: p50 {:?}, max {:?}",
        BATCH - 2,
        took[took.len() / 2],
        took[took.len() - 1]
    );
    let _ = svc.delete_queue(&q).await;
    let _ = svc.delete_queue(&dlq).await;
}
