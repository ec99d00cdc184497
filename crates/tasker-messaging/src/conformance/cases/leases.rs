//! Leases: hidden while held, back counted when they end, released or extended on demand, also
//! while other receives run (C2, C4.1, C4.2, C4.3).

use crate::conformance::support::prelude::*;

pub(super) async fn c2_leases(ctx: Ctx) -> CaseResultInner {
    let other = (ctx.factory)().await.ctx("factory (second receiver)")?;
    let (ctx, other) = (&ctx, &*other);
    ctx.timed_runs(
        "the lease still hiding the message at a third of its length",
        |n| c2_once(ctx, other, n),
    )
    .await
}

async fn c2_once(ctx: &Ctx, other: &dyn MessagingService, run: u32) -> R<Timing> {
    let svc = &ctx.service;
    let q = ctx.queue(&format!("lease{run}")).await?;
    let id = svc
        .send(&q, OutgoingMessage::new("leased"))
        .await
        .ctx("send")?;
    let lease = ctx.unit * 3;
    let (leased_at, first) = recv_timed(ctx, &**svc, &q, lease).await?;
    ensure!(
        first.metadata.message_id == id,
        "a different message was received"
    );
    for receiver in [&**svc, other] {
        let got = recv(receiver, &q, 10, lease).await?;
        ensure!(
            got.is_empty() || leased_at.elapsed() >= lease,
            "a leased message was handed to another receiver"
        );
    }
    tokio::time::sleep(lease / 3).await;
    let checked_at = leased_at.elapsed();
    let timing = if checked_at < lease - ctx.unit / 2 {
        let got = recv(other, &q, 10, lease).await?;
        ensure!(
            got.is_empty(),
            "the message reappeared before its lease ended"
        );
        Timing::Checked
    } else {
        Timing::Inconclusive(format!(
            "woke {checked_at:?} into a {lease:?} lease to check it"
        ))
    };
    let back = recv_some(
        ctx,
        other,
        &q,
        10,
        Duration::from_secs(30),
        lease + ctx.slack(),
    )
    .await?;
    came_back_counted(
        &back,
        id,
        leased_at.elapsed(),
        lease,
        Duration::from_millis(50),
    )?;
    other
        .delete_message(&q, back[0].receipt())
        .await
        .ctx("delete")?;
    Ok(timing)
}

pub(super) async fn c4_release_now(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("rel").await?;
    let id = svc.send(&q, OutgoingMessage::new("x")).await.ctx("send")?;
    let m = recv_one(&ctx, &q, Duration::from_secs(300)).await?;
    svc.change_message_visibility(&q, m.receipt(), Duration::ZERO)
        .await
        .ctx("change_message_visibility(0)")?;
    let again = recv_some(&ctx, &**svc, &q, 10, Duration::from_secs(60), ctx.unit * 2).await?;
    ensure!(
        again.len() == 1 && again[0].metadata.message_id == id,
        "released message not received"
    );
    ensure!(
        again[0].metadata.receive_count == 2,
        "receive_count {}",
        again[0].metadata.receive_count
    );
    svc.delete_message(&q, again[0].receipt())
        .await
        .ctx("delete")?;
    Ok(())
}

pub(super) async fn c4_delay_and_extend(ctx: Ctx) -> CaseResultInner {
    let ctx = &ctx;
    ctx.timed_runs("the extended lease past its first end", |n| c4_once(ctx, n))
        .await
}

async fn c4_once(ctx: &Ctx, run: u32) -> R<Timing> {
    let svc = &ctx.service;
    let q = ctx.queue(&format!("vis{run}")).await?;
    svc.send(&q, OutgoingMessage::new("x")).await.ctx("send")?;
    let m = recv_one(ctx, &q, Duration::from_secs(300)).await?;
    let delay = ctx.unit * 3;
    let start = Instant::now();
    svc.change_message_visibility(&q, m.receipt(), delay)
        .await
        .ctx("change_message_visibility(d)")?;
    ensure!(
        recv(&**svc, &q, 10, delay).await?.is_empty() || start.elapsed() >= delay,
        "visible right after a delay was set"
    );
    let back = recv_one(ctx, &q, delay).await?;
    let waited = start.elapsed();
    ensure!(
        waited + Duration::from_millis(50) >= delay,
        "came back after {waited:?}, before the {delay:?} delay"
    );
    // Extend a lease while "processing": past its first end it stays hidden.
    let leased_at = Instant::now();
    tokio::time::sleep(ctx.unit).await;
    svc.change_message_visibility(&q, back.receipt(), ctx.unit * 6)
        .await
        .ctx("extend lease")?;
    let first_end = delay + ctx.unit;
    let now = leased_at.elapsed();
    if now < first_end {
        tokio::time::sleep(first_end - now).await;
    }
    let checked_at = leased_at.elapsed();
    let timing = if checked_at < ctx.unit * 6 {
        ensure!(
            recv(&**svc, &q, 10, delay).await?.is_empty(),
            "an extended lease ended at its original time"
        );
        Timing::Checked
    } else {
        Timing::Inconclusive(format!(
            "woke {checked_at:?} after the lease began, past the extended end"
        ))
    };
    svc.delete_message(&q, back.receipt())
        .await
        .ctx("delete with the extended receipt")?;
    Ok(timing)
}

/// With `durable_leases`, a receiver that disconnects without acking (a crashed worker)
/// leaves the message hidden until its lease ends; then it comes back counted.
pub(super) async fn c17_durable_leases(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("durable").await?;
    let id = svc
        .send(&q, OutgoingMessage::new("held by a worker that dies"))
        .await
        .ctx("send")?;
    let receiver = ctx.connect().await?;
    let lease = ctx.unit * 5;
    let (leased_at, m) = recv_timed(&ctx, &*receiver, &q, lease).await?;
    ensure!(
        m.metadata.message_id == id,
        "the receiver got another message"
    );
    ctx.disconnect(receiver).await;
    // Give the backend time to notice the closed connection (an AMQP broker requeues then).
    tokio::time::sleep(ctx.unit).await;
    let got = recv(&**svc, &q, 10, Duration::from_secs(60)).await?;
    ensure!(
        got.is_empty() || leased_at.elapsed() >= lease,
        "the receiver disconnected and its lease ended at once: the message was receivable \
         {:?} into a {lease:?} lease",
        leased_at.elapsed()
    );
    let back = recv_some(
        &ctx,
        &**svc,
        &q,
        10,
        Duration::from_secs(60),
        lease + ctx.slack(),
    )
    .await?;
    came_back_counted(
        &back,
        id,
        leased_at.elapsed(),
        lease,
        Duration::from_millis(50),
    )?;
    svc.delete_message(&q, back[0].receipt())
        .await
        .ctx("delete")?;
    Ok(())
}

/// Receivers that release what they took while others receive on the same queue (and the same
/// service): every call succeeds, and afterwards every message is there exactly once. Caught
/// a provider whose release (a transactional move) broke the connection under a concurrent
/// receive.
pub(super) async fn c4_release_while_receiving(ctx: Ctx) -> CaseResultInner {
    const MESSAGES: usize = 20;
    // Each message is received about nine times: no receive limit may dead-letter it.
    let q = ctx.queue_name("race");
    ctx.service
        .create_queue_with(&q, &QueueOptions::with_max_receive_count(0))
        .await
        .ctx("create_queue_with(max_receive_count 0)")?;
    let sent: Vec<_> = (0..MESSAGES)
        .map(|i| OutgoingMessage::new(format!("race {i}")))
        .collect();
    let ids: HashSet<MessageId> = ctx
        .service
        .send_batch(&q, sent)
        .await
        .ctx("send_batch")?
        .into_iter()
        .collect();
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let (svc, q) = (ctx.service.clone(), q.clone());
            tokio::spawn(async move {
                for _ in 0..15 {
                    for m in recv(&*svc, &q, 3, Duration::from_secs(60)).await? {
                        svc.change_message_visibility(&q, m.receipt(), Duration::ZERO)
                            .await
                            .ctx("release while others receive")?;
                    }
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for racer in racers {
        racer
            .await
            .map_err(|e| format!("a receiver panicked: {e}"))??;
    }
    let back = collect_n(
        &ctx,
        &*ctx.service,
        &q,
        MESSAGES,
        10,
        Duration::from_secs(60),
    )
    .await?;
    let mut seen = HashSet::new();
    for m in &back {
        let id = m.metadata.message_id;
        ensure!(ids.contains(&id), "a message that was never sent: {id}");
        ensure!(seen.insert(id), "{id} handed out twice within one lease");
    }
    ensure!(
        seen.len() == MESSAGES,
        "{} of {MESSAGES} messages came back",
        seen.len()
    );
    let receipts: Vec<_> = back.iter().map(|m| m.receipt().clone()).collect();
    ctx.service
        .delete_messages(&q, &receipts)
        .await
        .ctx("delete_messages")?;
    Ok(())
}
