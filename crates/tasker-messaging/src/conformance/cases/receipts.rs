//! Receipts: delete is final and idempotent, stale and malformed receipts touch nothing (C3.1, C3.2, C10.4).

use crate::conformance::support::prelude::*;

pub(super) async fn c3_delete(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("del").await?;
    svc.send(&q, OutgoingMessage::new("x")).await.ctx("send")?;
    let m = recv_one(&ctx, &q, ctx.unit).await?;
    svc.delete_message(&q, m.receipt()).await.ctx("delete")?;
    svc.delete_message(&q, m.receipt())
        .await
        .ctx("second delete (must be idempotent)")?;
    let outcome = svc
        .delete_messages(&q, std::slice::from_ref(m.receipt()))
        .await
        .ctx("delete_messages after delete")?;
    ensure!(
        outcome.deleted == 1 && outcome.rejected.is_empty(),
        "repeated batch delete: {outcome:?}"
    );
    // Past the lease the message must not come back.
    tokio::time::sleep(ctx.unit * 2 + ctx.service.capabilities().timer_resolution).await;
    let got = recv(&**svc, &q, 10, ctx.unit).await?;
    ensure!(got.is_empty(), "a deleted message came back");
    let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
    ensure!(stats.total() == 0, "stats after delete: {stats:?}");
    Ok(())
}

pub(super) async fn c3_stale_receipt(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("stale").await?;
    svc.send(&q, OutgoingMessage::new("x")).await.ctx("send")?;
    let old = recv_one(&ctx, &q, ctx.unit).await?;
    let newer = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(
        newer.metadata.receive_count == 2,
        "second delivery count {}",
        newer.metadata.receive_count
    );
    expect_err(
        "delete with a stale receipt",
        svc.delete_message(&q, old.receipt()).await,
        is_invalid_receipt,
    )?;
    expect_err(
        "change_message_visibility with a stale receipt",
        svc.change_message_visibility(&q, old.receipt(), Duration::ZERO)
            .await,
        is_invalid_receipt,
    )?;
    let outcome = svc
        .delete_messages(&q, std::slice::from_ref(old.receipt()))
        .await
        .ctx("delete_messages")?;
    ensure!(
        outcome.deleted == 0 && outcome.rejected.len() == 1,
        "batch delete with a stale receipt: {outcome:?}"
    );
    let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
    ensure!(
        stats.total() == 1,
        "the newer delivery was affected: {stats:?}"
    );
    // The newer receipt still works.
    svc.change_message_visibility(&q, newer.receipt(), Duration::ZERO)
        .await
        .ctx("change_message_visibility with the current receipt")?;
    let third = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(
        third.metadata.receive_count == 3,
        "third delivery count {}",
        third.metadata.receive_count
    );
    // One batch holding a stale and the current receipt of the same message, stale first:
    // the current one deletes it (the stale one may be refused or counted as already gone).
    let receipts = [old.receipt().clone(), third.receipt().clone()];
    let outcome = svc
        .delete_messages(&q, &receipts)
        .await
        .ctx("batch delete with a stale and the current receipt")?;
    ensure!(
        outcome.rejected.iter().all(|(r, _)| r != third.receipt()),
        "the current receipt was refused next to a stale one: {outcome:?}"
    );
    ctx.eventually(
        "the message gone after the batch delete",
        ctx.slack(),
        || async {
            let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
            Ok((stats.total() == 0).then_some(()))
        },
    )
    .await?;
    Ok(())
}

pub(super) async fn c10_bad_receipts(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("rcpt").await?;
    let id = svc
        .send(&q, OutgoingMessage::new("keep me"))
        .await
        .ctx("send")?;
    let garbage = ReceiptHandle::from_text("not-a-receipt-%$#");
    expect_err(
        "delete(garbage)",
        svc.delete_message(&q, &garbage).await,
        is_invalid_receipt,
    )?;
    expect_err(
        "change_message_visibility(garbage)",
        svc.change_message_visibility(&q, &garbage, Duration::ZERO)
            .await,
        is_invalid_receipt,
    )?;
    if svc.capabilities().dead_letter_queues {
        expect_err(
            "dead_letter_message(garbage)",
            svc.dead_letter_message(&q, &garbage, "x").await,
            is_invalid_receipt,
        )?;
    }
    let outcome = svc
        .delete_messages(&q, &[garbage])
        .await
        .ctx("delete_messages(garbage)")?;
    ensure!(
        outcome.deleted == 0 && outcome.rejected.len() == 1,
        "{outcome:?}"
    );
    let m = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(
        m.metadata.message_id == id && m.metadata.receive_count == 1,
        "message lost or touched: {m:?}"
    );
    Ok(())
}

/// A receipt whose lease ended still works while nobody received the message again: the
/// work was done and nobody else holds it.
pub(super) async fn c3_old_receipt_until_received_again(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("oldrcpt").await?;
    let id = svc
        .send(&q, OutgoingMessage::new("late ack"))
        .await
        .ctx("send")?;
    let lease = ctx.unit;
    let m = recv_one(&ctx, &q, lease).await?;
    ensure!(
        m.metadata.message_id == id,
        "a different message was received"
    );
    // Past the end of the lease, received by nobody since.
    tokio::time::sleep(lease * 2 + svc.capabilities().timer_resolution).await;
    svc.delete_message(&q, m.receipt())
        .await
        .ctx("delete with a receipt whose lease ended (message not received again)")?;
    tokio::time::sleep(ctx.unit).await;
    let got = recv(&**svc, &q, 10, Duration::from_secs(60)).await?;
    ensure!(
        got.is_empty(),
        "the old receipt's delete did not remove the message: it came back"
    );
    let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
    ensure!(stats.total() == 0, "stats after a late delete: {stats:?}");
    Ok(())
}

/// A stale receipt cannot extend the newer delivery's lease (d > 0) nor dead-letter it.
pub(super) async fn c3_stale_receipt_cannot_extend(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("staleext").await?;
    svc.send(&q, OutgoingMessage::new("x")).await.ctx("send")?;
    let old = recv_one(&ctx, &q, ctx.unit).await?;
    let lease = ctx.unit * 3;
    let (leased_at, newer) = recv_timed(&ctx, &**svc, &q, lease).await?;
    ensure!(
        newer.metadata.receive_count == 2,
        "second delivery count {}",
        newer.metadata.receive_count
    );
    expect_err(
        "change_message_visibility(stale receipt, 600 s)",
        svc.change_message_visibility(&q, old.receipt(), Duration::from_secs(600))
            .await,
        is_invalid_receipt,
    )?;
    if svc.capabilities().dead_letter_queues {
        expect_err(
            "dead_letter_message with a stale receipt",
            svc.dead_letter_message(&q, old.receipt(), "stale").await,
            is_invalid_receipt,
        )?;
        let dlq = svc
            .dead_letter_queue_name(&q)
            .ctx("dead_letter_queue_name")?;
        let dead = recv(&**svc, &dlq, 10, Duration::from_secs(60)).await?;
        ensure!(
            dead.is_empty(),
            "a stale receipt dead-lettered the newer delivery"
        );
    }
    // The newer lease ends at its own time (the stale extension did not move it), and the
    // message comes back as its third delivery.
    let third = recv_some(
        &ctx,
        &**svc,
        &q,
        10,
        Duration::from_secs(60),
        lease + ctx.slack(),
    )
    .await?;
    ensure!(
        third.len() == 1 && third[0].metadata.receive_count == 3,
        "after the newer lease ended: {} message(s), receive_count {:?}",
        third.len(),
        third.first().map(|m| m.metadata.receive_count)
    );
    ensure!(
        leased_at.elapsed() + Duration::from_millis(50) >= lease,
        "came back before the newer lease ended"
    );
    svc.delete_message(&q, third[0].receipt())
        .await
        .ctx("delete")?;
    Ok(())
}

/// A receipt names a lease on one queue: used on another queue (where a message may even
/// have the same backend id) it is `InvalidReceipt` and touches nothing.
pub(super) async fn c3_receipt_on_another_queue(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let a = ctx.queue("rcpta").await?;
    let b = ctx.queue("rcptb").await?;
    let id_a = svc
        .send(&a, OutgoingMessage::new("on a"))
        .await
        .ctx("send a")?;
    let id_b = svc
        .send(&b, OutgoingMessage::new("on b"))
        .await
        .ctx("send b")?;
    let ma = recv_one(&ctx, &a, Duration::from_secs(60)).await?;
    let mb = recv_one(&ctx, &b, Duration::from_secs(60)).await?;
    ensure!(
        ma.metadata.message_id == id_a && mb.metadata.message_id == id_b,
        "received the wrong messages"
    );
    expect_err(
        "delete_message on queue b with a's receipt",
        svc.delete_message(&b, ma.receipt()).await,
        is_invalid_receipt,
    )?;
    expect_err(
        "change_message_visibility(0) on queue b with a's receipt",
        svc.change_message_visibility(&b, ma.receipt(), Duration::ZERO)
            .await,
        is_invalid_receipt,
    )?;
    if svc.capabilities().dead_letter_queues {
        expect_err(
            "dead_letter_message on queue b with a's receipt",
            svc.dead_letter_message(&b, ma.receipt(), "wrong queue")
                .await,
            is_invalid_receipt,
        )?;
    }
    let outcome = svc
        .delete_messages(&b, std::slice::from_ref(ma.receipt()))
        .await
        .ctx("delete_messages on queue b with a's receipt")?;
    ensure!(
        outcome.deleted == 0 && outcome.rejected.len() == 1,
        "batch delete on queue b with a's receipt: {outcome:?}"
    );
    // Both leases are untouched: nothing is receivable, and each receipt still deletes its
    // own message.
    for q in [&a, &b] {
        ensure!(
            recv(&**svc, q, 10, Duration::from_secs(60))
                .await?
                .is_empty(),
            "a message on {q} was released by a receipt of another queue"
        );
    }
    svc.delete_message(&a, ma.receipt())
        .await
        .ctx("delete on a with a's receipt")?;
    svc.delete_message(&b, mb.receipt())
        .await
        .ctx("delete on b with b's receipt")?;
    for q in [&a, &b] {
        let stats = svc.get_queue_stats(q).await.ctx("stats")?;
        ensure!(stats.total() == 0, "left on {q}: {stats:?}");
    }
    Ok(())
}

pub(super) async fn c3_receipt_of_an_earlier_queue(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("reinc").await?;
    svc.send(&q, OutgoingMessage::new("first life"))
        .await
        .ctx("send to the first queue")?;
    let old = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    svc.delete_queue(&q).await.ctx("delete_queue")?;
    svc.create_queue(&q).await.ctx("create_queue again")?;
    let id = svc
        .send(&q, OutgoingMessage::new("second life"))
        .await
        .ctx("send to the new queue")?;
    // Leased like the old one was (a backend numbering messages per queue gives it the same
    // number and count): only the queue's new life tells the receipts apart.
    let new = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(new.metadata.message_id == id, "received the wrong message");
    // The old message is gone: a delete may be refused or count as already gone, but must
    // not touch the new one; neither may a release.
    let _ = svc.delete_message(&q, old.receipt()).await;
    let _ = svc
        .delete_messages(&q, std::slice::from_ref(old.receipt()))
        .await;
    let _ = svc
        .change_message_visibility(&q, old.receipt(), Duration::ZERO)
        .await;
    let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
    ensure!(
        stats.total() == 1,
        "a receipt of the queue before delete_queue + create_queue deleted the new message: {stats:?}"
    );
    ensure!(
        recv(&**svc, &q, 10, Duration::from_secs(60))
            .await?
            .is_empty(),
        "a receipt of the queue before delete_queue + create_queue released the new message"
    );
    svc.delete_message(&q, new.receipt())
        .await
        .ctx("delete with the current receipt")?;
    let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
    ensure!(
        stats.total() == 0,
        "the current receipt did not delete: {stats:?}"
    );
    Ok(())
}
