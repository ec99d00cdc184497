//! Delayed sends (C5).

use crate::conformance::support::prelude::*;

pub(super) async fn c5_delayed_send(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("delay").await?;
    let delay = ctx.unit * 3;
    let start = Instant::now();
    let id = svc
        .send(&q, OutgoingMessage::new("later").with_delay(delay))
        .await
        .ctx("delayed send")?;
    ensure!(
        recv(&**svc, &q, 10, ctx.unit).await?.is_empty(),
        "a delayed message was receivable at once"
    );
    if svc.capabilities().detailed_stats && start.elapsed() < delay {
        let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
        ensure!(
            stats.delayed_count == Some(1) && stats.message_count == 0,
            "stats of a delayed message: {stats:?}"
        );
    }
    let got = recv_one(&ctx, &q, Duration::from_secs(30)).await?;
    let waited = start.elapsed();
    ensure!(got.metadata.message_id == id, "wrong message");
    ensure!(
        waited + Duration::from_millis(50) >= delay,
        "received after {waited:?}, before its {delay:?} delay"
    );
    ensure!(
        got.metadata.receive_count == 1,
        "receive_count {}",
        got.metadata.receive_count
    );
    svc.delete_message(&q, got.receipt()).await.ctx("delete")?;
    Ok(())
}
