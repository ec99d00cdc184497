//! Leases: hidden while held, back counted when they end, released or extended on demand (C2, C4.1, C4.2).

use crate::conformance::support::prelude::*;

pub(super) async fn c2_leases(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let other = (ctx.factory)().await.ctx("factory (second receiver)")?;
    let q = ctx.queue("lease").await?;
    let id = svc
        .send(&q, OutgoingMessage::new("leased"))
        .await
        .ctx("send")?;
    let lease = ctx.unit * 3;
    let (leased_at, first) = recv_timed(&ctx, &**svc, &q, lease).await?;
    ensure!(
        first.metadata.message_id == id,
        "a different message was received"
    );
    for receiver in [&**svc, &*other] {
        let got = recv(receiver, &q, 10, lease).await?;
        ensure!(
            got.is_empty(),
            "a leased message was handed to another receiver"
        );
    }
    tokio::time::sleep(lease / 3).await;
    if leased_at.elapsed() < lease - ctx.unit / 2 {
        let got = recv(&*other, &q, 10, lease).await?;
        ensure!(
            got.is_empty(),
            "the message reappeared before its lease ended"
        );
    }
    let back = recv_some(
        &ctx,
        &*other,
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
    Ok(())
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
    let svc = &ctx.service;
    let q = ctx.queue("vis").await?;
    svc.send(&q, OutgoingMessage::new("x")).await.ctx("send")?;
    let m = recv_one(&ctx, &q, Duration::from_secs(300)).await?;
    let delay = ctx.unit * 3;
    let start = Instant::now();
    svc.change_message_visibility(&q, m.receipt(), delay)
        .await
        .ctx("change_message_visibility(d)")?;
    ensure!(
        recv(&**svc, &q, 10, delay).await?.is_empty(),
        "visible right after a delay was set"
    );
    let back = recv_one(&ctx, &q, delay).await?;
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
    if leased_at.elapsed() < ctx.unit * 6 {
        ensure!(
            recv(&**svc, &q, 10, delay).await?.is_empty(),
            "an extended lease ended at its original time"
        );
    }
    svc.delete_message(&q, back.receipt())
        .await
        .ctx("delete with the extended receipt")?;
    Ok(())
}
