//! Stats and administration (C9).

use crate::conformance::support::prelude::*;

pub(super) async fn c9_stats_admin(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let caps = svc.capabilities().clone();
    let q = ctx.queue("stats").await?;
    let batch = (0..3)
        .map(|i| OutgoingMessage::new(format!("v{i}")))
        .collect();
    svc.send_batch(&q, batch).await.ctx("send_batch")?;
    if caps.delayed_send {
        svc.send(
            &q,
            OutgoingMessage::new("d").with_delay(Duration::from_secs(600)),
        )
        .await
        .ctx("delayed send")?;
    }
    let _held = recv_one(&ctx, &q, Duration::from_secs(600)).await?;
    let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
    ensure!(stats.queue_name == q, "stats for {}", stats.queue_name);
    ensure!(
        stats.message_count == 2,
        "visible count {} (expected 2): {stats:?}",
        stats.message_count
    );
    if caps.detailed_stats {
        ensure!(stats.in_flight_count == Some(1), "in-flight: {stats:?}");
        let delayed = u64::from(caps.delayed_send);
        ensure!(stats.delayed_count == Some(delayed), "delayed: {stats:?}");
        ensure!(
            stats.oldest_message_age_seconds.is_some_and(|a| a >= 0.0),
            "oldest age: {stats:?}"
        );
    }
    let purged = svc.purge_queue(&q).await.ctx("purge_queue")?;
    let after = svc.get_queue_stats(&q).await.ctx("stats after purge")?;
    ensure!(after.message_count == 0, "visible after purge: {after:?}");
    if caps.detailed_stats {
        ensure!(
            purged == stats.total() - after.total(),
            "purge returned {purged}, but the count fell from {} to {}",
            stats.total(),
            after.total()
        );
        ensure!(
            after.oldest_message_age_seconds.is_none() || after.total() > 0,
            "oldest age on an empty queue: {after:?}"
        );
    } else {
        ensure!(
            purged >= 2,
            "purge returned {purged}, at least 2 were visible"
        );
    }
    svc.delete_queue(&q).await.ctx("delete_queue")?;
    let never = ctx.queue_name("never");
    for missing in [&q, &never] {
        expect_err("stats", svc.get_queue_stats(missing).await, is_not_found)?;
        expect_err(
            "send",
            svc.send(missing, OutgoingMessage::new("x")).await,
            is_not_found,
        )?;
        expect_err(
            "send_batch",
            svc.send_batch(missing, vec![OutgoingMessage::new("x")])
                .await,
            is_not_found,
        )?;
        expect_err(
            "receive",
            svc.receive(missing, 1, ctx.unit).await,
            is_not_found,
        )?;
        expect_err("purge", svc.purge_queue(missing).await, is_not_found)?;
        expect_err(
            "delete_queue",
            svc.delete_queue(missing).await,
            is_not_found,
        )?;
    }
    Ok(())
}

/// `initialize` is idempotent: called again on a working service, it succeeds and the queues
/// and messages stay.
pub(super) async fn c9_initialize_idempotent(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("init").await?;
    let id = svc
        .send(&q, OutgoingMessage::new("before re-initialize"))
        .await
        .ctx("send")?;
    svc.initialize().await.ctx("initialize again")?;
    let (a, b) = tokio::join!(svc.initialize(), svc.initialize());
    a.ctx("concurrent initialize")?;
    b.ctx("concurrent initialize")?;
    let m = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(
        m.metadata.message_id == id && m.metadata.receive_count == 1,
        "a message sent before initialize was lost or touched"
    );
    svc.delete_message(&q, m.receipt())
        .await
        .ctx("delete after initialize")?;
    Ok(())
}
