//! Consumer streams and waits (C12, C13, C14).

use crate::conformance::support::prelude::*;

pub(super) async fn c12_stream(ctx: Ctx) -> CaseResultInner {
    let q = ctx.queue("stream").await?;
    let counting = Arc::new(CountingService::new(ctx.service.clone()));
    let max_idle = Duration::from_millis(100);
    let options = ConsumerOptions {
        batch_size: 5,
        visibility_timeout: Duration::from_secs(120),
        min_idle_backoff: Duration::from_millis(1),
        max_idle_backoff: max_idle,
    };
    let mut stream = counting.consume(&q, options);
    let producer = {
        let (svc, q) = (ctx.service.clone(), q.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for round in 0..2 {
                for i in 0..5 {
                    ids.push(
                        svc.send(&q, OutgoingMessage::new(format!("r{round}-{i}")))
                            .await?,
                    );
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok::<_, MessagingError>(ids)
        })
    };
    let mut got = HashSet::new();
    while got.len() < 10 {
        let next = tokio::time::timeout(ctx.slack() * 2, stream.next())
            .await
            .map_err(|_| format!("the stream stalled after {} of 10 messages", got.len()))?;
        let Some(item) = next else {
            return Err("the stream ended while messages were pending".into());
        };
        let m = item.ctx("stream item")?;
        ctx.service
            .delete_message(&q, m.receipt())
            .await
            .ctx("delete")?;
        got.insert(m.metadata.message_id);
    }
    let sent: HashSet<_> = producer
        .await
        .map_err(|e| e.to_string())?
        .ctx("send")?
        .into_iter()
        .collect();
    ensure!(
        got == sent,
        "the stream delivered other messages than were sent"
    );

    // Idle: the stream is polled for a second; it must wait, not spin.
    let idle = Duration::from_secs(1);
    let before = counting.receives();
    let polled = tokio::time::timeout(idle, stream.next()).await;
    ensure!(
        polled.is_err(),
        "an idle stream yielded {:?}",
        polled.map(|o| o.map(|r| r.is_ok()))
    );
    let idle_receives = counting.receives() - before;
    // 1 s at <= 100 ms per wait, plus the ramp from 1 ms: about 17; spinning would be thousands.
    ensure!(
        idle_receives <= 30,
        "an idle stream called receive {idle_receives} times in {idle:?}"
    );

    // Dropped: nothing keeps receiving in the background, nothing is taken.
    drop(stream);
    let at_drop = counting.receives();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        counting.receives() == at_drop,
        "receive was called after the stream was dropped"
    );
    // Seen from the provider: messages sent after the drop stay visible, none in flight, so a
    // push subscription that outlived its stream (and would take them) fails here.
    let mut after = HashSet::new();
    for i in 0..5 {
        after.insert(
            ctx.service
                .send(&q, OutgoingMessage::new(format!("after drop {i}")))
                .await
                .ctx("send")?,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let visible_all = |stats: &crate::service::QueueStats| {
        stats.message_count == 5 && stats.in_flight_count.unwrap_or(0) == 0
    };
    ctx.eventually(
        "5 messages sent after the drop visible",
        ctx.slack(),
        || async {
            let stats = ctx.service.get_queue_stats(&q).await.ctx("stats")?;
            Ok(visible_all(&stats).then_some(()))
        },
    )
    .await?;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = ctx.service.get_queue_stats(&q).await.ctx("stats")?;
        ensure!(
            visible_all(&stats),
            "after the stream was dropped, messages sent later were taken: {stats:?}"
        );
    }
    let got = collect_n(&ctx, &*ctx.service, &q, 5, 10, Duration::from_secs(60)).await?;
    ensure!(
        got.iter()
            .all(|m| after.contains(&m.metadata.message_id) && m.metadata.receive_count == 1),
        "a dropped stream took a message"
    );

    // Waiting on a queue that does not exist sleeps out its time: a loop around it never spins.
    let missing = ctx.queue_name("missing");
    let max_wait = Duration::from_millis(300);
    let started = Instant::now();
    ctx.service.wait_for_messages(&missing, max_wait).await;
    ensure!(
        started.elapsed() + Duration::from_millis(20) >= max_wait,
        "wait_for_messages on a missing queue returned after {:?}, before its {max_wait:?}",
        started.elapsed()
    );
    Ok(())
}

/// Scheduling and network noise allowed on top of the timer resolution for a wake-up.
const WAKE_MARGIN: Duration = Duration::from_millis(300);

pub(super) async fn c13_wakeup(ctx: Ctx) -> CaseResultInner {
    let svc = ctx.service.clone();
    let other = (ctx.factory)().await.ctx("factory (second sender)")?;
    let q = ctx.queue("wake").await?;
    // Far longer than the case may take: returning by timeout fails it.
    let max_wait = Duration::from_secs(60);
    let waiting = {
        let (svc, q) = (svc.clone(), q.clone());
        tokio::spawn(async move { svc.wait_for_messages(&q, max_wait).await })
    };
    // The queue is empty: the wait must still be waiting (a wait that returns at once would
    // make every idle loop a spin).
    tokio::time::sleep(ctx.unit * 2).await;
    ensure!(
        !waiting.is_finished(),
        "wait_for_messages returned on an empty queue with nothing sent"
    );
    let id = other
        .send(&q, OutgoingMessage::new("wake up"))
        .await
        .ctx("send (other connection)")?;
    let sent_at = Instant::now();
    // "As soon as one arrives": within the declared timer resolution plus scheduling noise,
    // so a provider that polls every second or two fails.
    let within = svc.capabilities().timer_resolution + WAKE_MARGIN;
    match tokio::time::timeout(within, waiting).await {
        Ok(joined) => joined.map_err(|e| format!("the waiting task failed: {e}"))?,
        Err(_) => {
            return Err(format!(
                "wait_for_messages did not wake within {within:?} of a send"
            ))
        }
    }
    let woke_after = sent_at.elapsed();
    // The wait did not use up a delivery: the waiting service receives the message now, as
    // its first delivery.
    let got = recv(&*svc, &q, 10, Duration::from_secs(30)).await?;
    ensure!(
        got.len() == 1 && got[0].metadata.message_id == id,
        "after the wake the waiting service received {} message(s), not the one sent",
        got.len()
    );
    ensure!(
        got[0].metadata.receive_count == 1,
        "the woken receive has receive_count {} (want 1)",
        got[0].metadata.receive_count
    );
    svc.delete_message(&q, got[0].receipt())
        .await
        .ctx("delete")?;
    ensure!(
        woke_after < within,
        "the wait woke {woke_after:?} after the send"
    );

    // A caller that gives up on a wait (a timeout around it) loses nothing: the next message
    // sent is received by the waiting service, as a first delivery. (One early return is
    // allowed, e.g. a wakeup left over from the last send; returning at once again and again
    // on an empty queue would make a loop spin.)
    let mut gave_up = false;
    for _ in 0..3 {
        let wait = svc.wait_for_messages(&q, Duration::from_secs(2));
        if tokio::time::timeout(ctx.unit / 2, wait).await.is_err() {
            gave_up = true;
            break;
        }
    }
    ensure!(
        gave_up,
        "wait_for_messages on an empty queue returned at once three times in a row"
    );
    let id = other
        .send(&q, OutgoingMessage::new("after a given-up wait"))
        .await
        .ctx("send (other connection)")?;
    let got = recv_some(&ctx, &*svc, &q, 10, Duration::from_secs(30), ctx.slack()).await?;
    ensure!(
        got.len() == 1 && got[0].metadata.message_id == id && got[0].metadata.receive_count == 1,
        "after a given-up wait the message was not received as its first delivery"
    );
    svc.delete_message(&q, got[0].receipt())
        .await
        .ctx("delete")?;
    Ok(())
}

pub(super) async fn c14_stream_lease_ends(ctx: Ctx) -> CaseResultInner {
    let svc = ctx.service.clone();
    let other = (ctx.factory)().await.ctx("factory (second receiver)")?;
    let q = ctx.queue("streamlease").await?;
    let id = svc
        .send(&q, OutgoingMessage::new("taken by a stream"))
        .await
        .ctx("send")?;
    let lease = ctx.unit * 3;
    let options = ConsumerOptions {
        batch_size: 1,
        visibility_timeout: lease,
        ..ConsumerOptions::default()
    };
    let mut stream = svc.consume(&q, options);
    let first = tokio::time::timeout(ctx.slack(), stream.next())
        .await
        .map_err(|_| "the stream delivered nothing".to_string())?
        .ok_or("the stream ended")?
        .ctx("stream item")?;
    let leased_at = Instant::now();
    ensure!(
        first.metadata.message_id == id && first.metadata.receive_count == 1,
        "the stream's first delivery is the message with receive_count 1 (got {})",
        first.metadata.receive_count
    );
    // The stream is dropped; the message it yielded keeps its lease (hidden from everyone)
    // until the lease ends, then any receiver gets it, counted as its second delivery.
    drop(stream);
    ensure!(
        recv(&*other, &q, 10, Duration::from_secs(30))
            .await?
            .is_empty()
            || leased_at.elapsed() >= lease,
        "dropping the stream ended the lease of a message it had yielded"
    );
    let back = recv_some(
        &ctx,
        &*other,
        &q,
        10,
        Duration::from_secs(30),
        lease + ctx.slack(),
    )
    .await?;
    came_back_counted(&back, id, leased_at.elapsed(), lease, ctx.unit / 4)?;
    other
        .delete_message(&q, back[0].receipt())
        .await
        .ctx("delete")?;
    Ok(())
}

/// A consumer stream yields a retryable error and goes on (the next message still comes);
/// a permanent one (the queue was deleted) is yielded and ends the stream. The retryable
/// error comes from a fault-injecting wrapper around the provider.
pub(super) async fn c12_stream_errors(ctx: Ctx) -> CaseResultInner {
    use crate::resilience::{FaultInjectingService, Op};
    let q = ctx.queue("streamerr").await?;
    let faulty = Arc::new(FaultInjectingService::new(ctx.service.clone()));
    let control = faulty.control();
    control.only(&[Op::Receive]);
    control.fail_next(1);
    let options = ConsumerOptions {
        batch_size: 1,
        visibility_timeout: Duration::from_secs(60),
        min_idle_backoff: Duration::from_millis(1),
        max_idle_backoff: Duration::from_millis(50),
    };
    let id = ctx
        .service
        .send(&q, OutgoingMessage::new("after a retryable error"))
        .await
        .ctx("send")?;
    let mut stream = faulty.consume(&q, options);
    match next_item(&mut stream, ctx.slack()).await? {
        Some(Err(e)) if e.is_retryable() => {}
        Some(Err(e)) => return Err(format!("first item: not the injected retryable error: {e}")),
        Some(Ok(m)) => {
            return Err(format!(
                "first item was message {} although the first receive failed: the stream \
                 does not go through the service's layers, or hid the error",
                m.metadata.message_id
            ))
        }
        None => return Err("the stream ended on a retryable error".into()),
    }
    let m = match next_item(&mut stream, ctx.slack()).await? {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(format!("after a retryable error: {e}")),
        None => return Err("the stream ended after a retryable error".into()),
    };
    ensure!(
        m.metadata.message_id == id,
        "after a retryable error the stream yielded another message"
    );
    ctx.service
        .delete_message(&q, m.receipt())
        .await
        .ctx("delete")?;
    // Permanent: the queue goes away under the stream.
    ctx.service.delete_queue(&q).await.ctx("delete_queue")?;
    match next_item(&mut stream, ctx.slack()).await? {
        Some(Err(e)) if !e.is_retryable() => {}
        Some(Err(e)) => {
            return Err(format!(
                "after the queue was deleted the stream yielded a retryable error: {e}"
            ))
        }
        Some(Ok(m)) => {
            return Err(format!(
                "after the queue was deleted the stream yielded {}",
                m.metadata.message_id
            ))
        }
        None => return Err("the stream ended without yielding the permanent error".into()),
    }
    ensure!(
        next_item(&mut stream, ctx.slack()).await?.is_none(),
        "the stream went on after a permanent error"
    );
    Ok(())
}

/// A message no handler saw does not count as a receive: five consumers that each handle one
/// message of a backlog and are dropped (whatever they prefetched), and five waits on fresh
/// connections that end without a receive, leave the rest of the backlog at receive_count 0:
/// the next receive sees 1, and nothing is dead-lettered.
pub(super) async fn c16_unseen_not_counted(ctx: Ctx) -> CaseResultInner {
    const RESTARTS: usize = 5;
    const LEFT: usize = 5;
    let svc = &ctx.service;
    let caps = svc.capabilities().clone();
    let q = ctx.queue_name("unseen");
    // A low limit, so counted restarts would dead-letter messages nobody processed.
    svc.create_queue_with(&q, &QueueOptions::with_max_receive_count(3))
        .await
        .ctx("create_queue_with(max_receive_count 3)")?;
    let backlog: Vec<_> = (0..RESTARTS + LEFT)
        .map(|i| OutgoingMessage::new(format!("backlog {i}")))
        .collect();
    svc.send_batch(&q, backlog).await.ctx("send_batch")?;
    let options = ConsumerOptions {
        batch_size: 1,
        visibility_timeout: Duration::from_secs(60),
        ..ConsumerOptions::default()
    };
    for restart in 0..RESTARTS {
        let worker = ctx.connect().await?;
        let mut stream = worker.consume(&q, options.clone());
        let m = tokio::time::timeout(ctx.slack(), stream.next())
            .await
            .map_err(|_| format!("consumer {restart}: no message"))?
            .ok_or(format!("consumer {restart}: the stream ended"))?
            .ctx("stream item")?;
        worker
            .delete_message(&q, m.receipt())
            .await
            .ctx("ack the handled message")?;
        // Long enough for a push subscription to fill its prefetch window.
        tokio::time::sleep(ctx.unit / 2).await;
        drop(stream);
        ctx.disconnect(worker).await;
    }
    for _ in 0..RESTARTS {
        let waiter = ctx.connect().await?;
        waiter.wait_for_messages(&q, ctx.unit).await;
        ctx.disconnect(waiter).await;
    }
    let rest = collect_n(&ctx, &**svc, &q, LEFT, 10, Duration::from_secs(60)).await?;
    for m in &rest {
        ensure!(
            m.metadata.receive_count == 1,
            "a message nobody handled has receive_count {} after {RESTARTS} consumer restarts \
             and {RESTARTS} waits",
            m.metadata.receive_count
        );
    }
    if caps.dead_letter_queues {
        let dlq = svc
            .dead_letter_queue_name(&q)
            .ctx("dead_letter_queue_name")?;
        let dead = recv(&**svc, &dlq, 10, Duration::from_secs(60)).await?;
        ensure!(
            dead.is_empty(),
            "{} message(s) nobody handled were dead-lettered",
            dead.len()
        );
    }
    Ok(())
}
