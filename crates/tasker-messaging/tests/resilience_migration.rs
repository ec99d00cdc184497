//! Migration between providers: every message id accounted for, nothing lost. The round trip
//! is in `migration_support` (generic over the target); `migration_pgmq.rs` instantiates it
//! for PGMQ.

mod migration_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use migration_support::{drain, in_memory, round_trip, seed, unique_queue};
use tasker_messaging::resilience::fault::FaultInjectingService;
use tasker_messaging::resilience::{migrate_queue, MigrationOptions, Op};
use tasker_messaging::MessagingService;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_in_memory_to_in_memory_and_back() {
    round_trip("mem", Arc::new(|| Box::pin(async { Ok(in_memory()) }))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_loses_nothing_and_a_rerun_finishes() {
    let queue = unique_queue("sendfail");
    let source = in_memory();
    let sent = seed(&*source, &queue, 1_000).await;
    let fault = FaultInjectingService::new(in_memory());
    let control = fault.control();
    let target: Arc<dyn MessagingService> = Arc::new(fault);
    target.create_queue(&queue).await.unwrap();
    control.only(&[Op::SendBatch]);

    // Two batches go through, the third send fails.
    let options = MigrationOptions {
        batch_size: 100,
        ..Default::default()
    };
    let mut moved = 0;
    let mut batches = 0;
    let err = migrate_queue(&*source, &*target, &queue, &options, |p| {
        moved = p.moved;
        batches += 1;
        if batches == 2 {
            control.fail_next(1);
        }
    })
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(moved, 200);
    let left = source.get_queue_stats(&queue).await.unwrap();
    assert_eq!(
        (left.message_count, left.in_flight_count),
        (800, Some(0)),
        "leases released"
    );

    let report = migrate_queue(&*source, &*target, &queue, &options, |_| {})
        .await
        .unwrap();
    assert_eq!(report.moved, 800);
    let seen = drain(&*target, &queue, &sent).await;
    assert_eq!(seen.len(), 1_000);
    assert!(seen.values().all(|&n| n == 1));
}

#[tokio::test(start_paused = true)]
async fn a_failed_source_delete_duplicates_under_the_same_ids_but_loses_nothing() {
    let queue = unique_queue("delfail");
    let mem = in_memory();
    let sent = seed(&*mem, &queue, 1_000).await;
    let fault = FaultInjectingService::new(mem);
    let control = fault.control();
    let source: Arc<dyn MessagingService> = Arc::new(fault);
    let target = in_memory();
    control.only(&[Op::DeleteMessages]);
    control.fail_next(1);

    let options = MigrationOptions {
        batch_size: 100,
        visibility_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    migrate_queue(&*source, &*target, &queue, &options, |_| {})
        .await
        .unwrap_err();
    // The first batch is now in the target and, leased, in the source.
    tokio::time::advance(Duration::from_secs(30)).await;
    let report = migrate_queue(&*source, &*target, &queue, &options, |_| {})
        .await
        .unwrap();
    assert_eq!(report.moved, 1_000);
    let seen = drain(&*target, &queue, &sent).await;
    assert_eq!(seen.len(), 1_000, "every id present");
    let twice: HashSet<_> = seen
        .iter()
        .filter(|(_, &n)| n == 2)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        twice.len(),
        100,
        "exactly the batch whose delete failed came twice"
    );
}
