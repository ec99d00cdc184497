//! Dead letters: the receive limit, explicit dead-lettering, undecodable payloads, redrive (C6.1, C6.2, C10.3).

use crate::conformance::support::prelude::*;

pub(super) async fn c6_max_receive(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue_name("mrc");
    svc.create_queue_with(&q, &QueueOptions::with_max_receive_count(2))
        .await
        .ctx("create_queue_with(max_receive_count 2)")?;
    let dlq = svc
        .dead_letter_queue_name(&q)
        .ctx("dead_letter_queue_name")?;
    let out =
        OutgoingMessage::new(&b"{\"poison\": true}"[..]).with_correlation_id(CorrelationId::new());
    svc.send(&q, out.clone()).await.ctx("send")?;
    for n in 1..=2u32 {
        let m = recv_one(&ctx, &q, ctx.unit).await?;
        ensure!(
            m.metadata.receive_count == n,
            "receive {n} had count {}",
            m.metadata.receive_count
        );
    }
    let dead = ctx
        .eventually(
            "the message in the dead-letter queue",
            ctx.unit * 2 + ctx.slack(),
            || {
                let (svc, q, dlq) = (svc.clone(), q.clone(), dlq.clone());
                async move {
                    let again = recv(&*svc, &q, 10, Duration::from_secs(60)).await?;
                    ensure!(
                        again.is_empty(),
                        "delivered a third time past max_receive_count 2"
                    );
                    // The DLQ exists from the queue's creation on: QueueNotFound fails.
                    let mut got = svc
                        .receive(&dlq, 10, Duration::from_secs(60))
                        .await
                        .ctx("receive from the DLQ")?;
                    ensure!(
                        got.len() <= 1,
                        "the DLQ holds {} copies of the dead letter",
                        got.len()
                    );
                    Ok(got.pop())
                }
            },
        )
        .await?;
    ensure!(dead.payload == out.payload, "payload changed in the DLQ");
    ensure!(
        dead.metadata.message_id == out.message_id,
        "message id changed in the DLQ"
    );
    ensure!(
        dead.metadata.correlation_id == out.correlation_id,
        "correlation id changed in the DLQ"
    );
    let Some(info) = &dead.metadata.dead_letter else {
        return Err("a dead letter carries no dead-letter info".into());
    };
    ensure!(
        info.source_queue == q,
        "source queue {} != {q}",
        info.source_queue
    );
    ensure!(
        info.receive_count == 2,
        "dead-letter receive_count {}",
        info.receive_count
    );
    ensure!(
        info.reason
            == DeadLetterReason::MaxReceiveCountExceeded {
                max_receive_count: 2
            },
        "reason {:?}",
        info.reason
    );
    // A second copy, arriving late, would show here (the first is still leased).
    tokio::time::sleep(ctx.unit).await;
    let copies = recv(&**svc, &dlq, 10, Duration::from_secs(60)).await?;
    ensure!(
        copies.is_empty(),
        "the DLQ holds a second copy of the dead letter ({} more)",
        copies.len()
    );
    if svc.capabilities().detailed_stats {
        let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
        ensure!(
            stats.total() == 0 && stats.dead_letter_count == Some(1),
            "stats after dead-lettering: {stats:?}"
        );
    }
    // Redrive: release it in the DLQ, move it back. Released, it is counted by every
    // provider that counts dead letters (some count only receivable ones), and exactly once.
    svc.change_message_visibility(&dlq, dead.receipt(), Duration::ZERO)
        .await
        .ctx("release in DLQ")?;
    ctx.eventually("the dead letter counted in stats", ctx.slack(), || async {
        let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
        match stats.dead_letter_count {
            None | Some(1) => Ok(Some(())),
            Some(0) => Ok(None),
            Some(n) => Err(format!("stats count {n} dead letters, expected 1")),
        }
    })
    .await?;
    let moved = svc
        .redrive_dead_letters(&q, 10)
        .await
        .ctx("redrive_dead_letters")?;
    ensure!(moved == 1, "redrive moved {moved}, expected 1");
    let back = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(
        back.metadata.message_id == out.message_id,
        "redriven message has another id"
    );
    ensure!(back.payload == out.payload, "redriven payload changed");
    ensure!(
        back.metadata.correlation_id == out.correlation_id,
        "redriven correlation id changed"
    );
    ensure!(
        back.metadata.receive_count == 1,
        "redrive must reset receive_count, got {}",
        back.metadata.receive_count
    );
    ensure!(
        back.metadata.dead_letter.is_none(),
        "redriven message still has dead-letter info"
    );
    svc.delete_message(&q, back.receipt()).await.ctx("delete")?;
    ensure!(
        recv(&**svc, &dlq, 10, ctx.unit).await?.is_empty(),
        "the DLQ still holds the redriven message"
    );
    Ok(())
}

pub(super) async fn c6_explicit(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("exp").await?;
    let dlq = svc
        .dead_letter_queue_name(&q)
        .ctx("dead_letter_queue_name")?;
    let id = svc
        .send(&q, OutgoingMessage::new("card"))
        .await
        .ctx("send")?;
    let m = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    svc.dead_letter_message(&q, m.receipt(), "permanent failure: card declined")
        .await
        .ctx("dead_letter_message")?;
    expect_err(
        "dead_letter_message again with the same receipt",
        svc.dead_letter_message(&q, m.receipt(), "again").await,
        is_invalid_receipt,
    )?;
    ensure!(
        recv(&**svc, &q, 10, ctx.unit).await?.is_empty(),
        "still in the source queue"
    );
    let dead = recv_some(&ctx, &**svc, &dlq, 10, Duration::from_secs(60), ctx.slack()).await?;
    ensure!(
        dead.len() == 1 && dead[0].metadata.message_id == id,
        "DLQ holds {dead:?}"
    );
    let info = dead[0]
        .metadata
        .dead_letter
        .as_deref()
        .ok_or("no dead-letter info")?;
    ensure!(
        matches!(&info.reason, DeadLetterReason::Rejected { reason } if reason.contains("card declined")),
        "reason {:?}",
        info.reason
    );
    ensure!(
        info.source_queue == q && info.receive_count == 1,
        "info {info:?}"
    );
    Ok(())
}

pub(super) async fn c10_undecodable_dead_lettered(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("undecdl").await?;
    let dlq = svc
        .dead_letter_queue_name(&q)
        .ctx("dead_letter_queue_name")?;
    let bad = svc
        .send(&q, OutgoingMessage::new("{\"task_uuid\": 7}"))
        .await
        .ctx("send")?;
    let step = StepMessage::random();
    svc.send_message(&q, &step).await.ctx("send_message")?;
    let good = recv_typed::<StepMessage>(&ctx, &**svc, &q, Duration::from_secs(60)).await?;
    ensure!(
        good.len() == 1 && good[0].message == step,
        "typed receive returned {good:?}"
    );
    let dead = recv_some(&ctx, &**svc, &dlq, 10, Duration::from_secs(60), ctx.slack()).await?;
    ensure!(
        dead.len() == 1 && dead[0].metadata.message_id == bad,
        "DLQ holds {dead:?}"
    );
    ensure!(
        &dead[0].payload[..] == b"{\"task_uuid\": 7}",
        "payload changed"
    );
    let info = dead[0]
        .metadata
        .dead_letter
        .as_deref()
        .ok_or("no dead-letter info")?;
    ensure!(
        matches!(&info.reason, DeadLetterReason::Rejected { reason } if reason.contains("undecodable")),
        "reason {:?}",
        info.reason
    );
    Ok(())
}

/// Sends `n` messages and dead-letters each explicitly; returns their ids.
async fn dead_letter_n(ctx: &Ctx, q: &QueueName, n: usize) -> R<HashSet<MessageId>> {
    let svc = &ctx.service;
    let mut ids = HashSet::new();
    for i in 0..n {
        ids.insert(
            svc.send(q, OutgoingMessage::new(format!("dead {i}")))
                .await
                .ctx("send")?,
        );
    }
    let got = collect_n(ctx, &**svc, q, n, 10, Duration::from_secs(60)).await?;
    for m in &got {
        svc.dead_letter_message(q, m.receipt(), "for redrive")
            .await
            .ctx("dead_letter_message")?;
    }
    Ok(ids)
}

/// Redrive moves at most `max`, and never a dead letter someone holds leased.
pub(super) async fn c6_redrive_bounds(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("redrive").await?;
    let dlq = svc
        .dead_letter_queue_name(&q)
        .ctx("dead_letter_queue_name")?;
    let ids = dead_letter_n(&ctx, &q, 3).await?;
    // One dead letter is leased by someone inspecting the DLQ.
    let held = recv_one(&ctx, &dlq, Duration::from_secs(600)).await?;
    ensure!(
        ids.contains(&held.metadata.message_id),
        "the DLQ holds a message that was not dead-lettered"
    );
    let moved = svc
        .redrive_dead_letters(&q, 1)
        .await
        .ctx("redrive_dead_letters(max 1)")?;
    ensure!(moved == 1, "redrive(max 1) moved {moved}");
    let moved = svc
        .redrive_dead_letters(&q, 10)
        .await
        .ctx("redrive_dead_letters(max 10)")?;
    ensure!(
        moved == 1,
        "redrive(max 10) moved {moved}; 1 receivable dead letter was left (the other is leased)"
    );
    let back = collect_n(&ctx, &**svc, &q, 2, 10, Duration::from_secs(60)).await?;
    for m in &back {
        ensure!(
            ids.contains(&m.metadata.message_id)
                && m.metadata.message_id != held.metadata.message_id,
            "redrive moved the leased dead letter (or an unknown message)"
        );
    }
    tokio::time::sleep(ctx.unit).await;
    ensure!(
        recv(&**svc, &q, 10, Duration::from_secs(60))
            .await?
            .is_empty(),
        "redrive moved more than the receivable dead letters"
    );
    // Released, the held dead letter is redriven too, and its receipt no longer works there.
    svc.change_message_visibility(&dlq, held.receipt(), Duration::ZERO)
        .await
        .ctx("release the held dead letter")?;
    let moved = svc
        .redrive_dead_letters(&q, 10)
        .await
        .ctx("redrive after release")?;
    ensure!(
        moved == 1,
        "redrive of the released dead letter moved {moved}"
    );
    let last = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(
        last.metadata.message_id == held.metadata.message_id,
        "the released dead letter did not come back"
    );
    Ok(())
}

/// Purge removes the queue's messages, not its dead letters; deleting the queue removes the
/// DLQ with it.
pub(super) async fn c6_purge_and_delete_with_dlq(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("purgedlq").await?;
    let dlq = svc
        .dead_letter_queue_name(&q)
        .ctx("dead_letter_queue_name")?;
    let dead = dead_letter_n(&ctx, &q, 1).await?;
    svc.send_batch(
        &q,
        vec![
            OutgoingMessage::new("live 1"),
            OutgoingMessage::new("live 2"),
        ],
    )
    .await
    .ctx("send_batch")?;
    let purged = svc.purge_queue(&q).await.ctx("purge_queue")?;
    ensure!(
        purged == 2,
        "purge returned {purged}, 2 live messages were queued"
    );
    let kept = recv_some(&ctx, &**svc, &dlq, 10, Duration::from_secs(60), ctx.slack())
        .await
        .map_err(|e| format!("purge removed the dead letters ({e})"))?;
    ensure!(
        kept.len() == 1 && dead.contains(&kept[0].metadata.message_id),
        "the DLQ after purge holds {} message(s)",
        kept.len()
    );
    svc.delete_queue(&q).await.ctx("delete_queue")?;
    expect_err(
        "receive from the DLQ of a deleted queue",
        svc.receive(&dlq, 10, Duration::from_secs(60)).await,
        is_not_found,
    )?;
    expect_err(
        "stats of the DLQ of a deleted queue",
        svc.get_queue_stats(&dlq).await,
        is_not_found,
    )?;
    Ok(())
}

/// A second `create_queue_with` with other options keeps the first creation's options.
pub(super) async fn c6_first_options_stay(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue_name("firstopts");
    svc.create_queue_with(&q, &QueueOptions::with_max_receive_count(2))
        .await
        .ctx("create_queue_with(max_receive_count 2)")?;
    svc.create_queue_with(&q, &QueueOptions::with_max_receive_count(5))
        .await
        .ctx("create_queue_with(max_receive_count 5) again")?;
    let dlq = svc
        .dead_letter_queue_name(&q)
        .ctx("dead_letter_queue_name")?;
    let id = svc
        .send(&q, OutgoingMessage::new("limit 2"))
        .await
        .ctx("send")?;
    for n in 1..=2u32 {
        let m = recv_one(&ctx, &q, ctx.unit).await?;
        ensure!(
            m.metadata.message_id == id && m.metadata.receive_count == n,
            "receive {n} had count {}",
            m.metadata.receive_count
        );
    }
    let dead = ctx
        .eventually(
            "the message dead-lettered after 2 receives",
            ctx.unit * 2 + ctx.slack(),
            || async {
                let again = recv(&**svc, &q, 10, Duration::from_secs(60)).await?;
                ensure!(
                    again.is_empty(),
                    "delivered a third time: the second creation's max_receive_count 5 replaced 2"
                );
                let mut got = recv(&**svc, &dlq, 10, Duration::from_secs(60)).await?;
                Ok(got.pop())
            },
        )
        .await?;
    let info = dead
        .metadata
        .dead_letter
        .as_deref()
        .ok_or("no dead-letter info")?;
    ensure!(
        info.reason
            == DeadLetterReason::MaxReceiveCountExceeded {
                max_receive_count: 2
            },
        "reason {:?}",
        info.reason
    );
    Ok(())
}

/// A receipt whose message went to the dead-letter queue does not delete it: the dead letter
/// lives on (a redrive would run the work again), so "already deleted" would be a lie. Both
/// ways a message gets there under a receipt: a later receive found it over its limit after
/// the lease ended, and an explicit dead-letter with that very receipt.
pub(super) async fn c6_dead_lettered_receipt_refused(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue_name("dlrcpt");
    svc.create_queue_with(&q, &QueueOptions::with_max_receive_count(1))
        .await
        .ctx("create_queue_with(max_receive_count 1)")?;
    let dlq = svc
        .dead_letter_queue_name(&q)
        .ctx("dead_letter_queue_name")?;
    let over = svc
        .send(&q, OutgoingMessage::new("over its limit"))
        .await
        .ctx("send")?;
    let first = recv_one(&ctx, &q, ctx.unit).await?;
    ensure!(first.metadata.message_id == over, "another message came");
    // Past the lease; the next receives find it over its limit and dead-letter it.
    tokio::time::sleep(ctx.unit * 2 + svc.capabilities().timer_resolution).await;
    ctx.eventually(
        "the message over its limit in the dead-letter queue",
        ctx.unit * 2 + ctx.slack(),
        || async {
            let again = recv(&**svc, &q, 10, Duration::from_secs(60)).await?;
            ensure!(again.is_empty(), "delivered again past max_receive_count 1");
            let stats = svc.get_queue_stats(&dlq).await.ctx("stats of the DLQ")?;
            Ok((stats.total() == 1).then_some(()))
        },
    )
    .await?;
    expect_err(
        "delete_message with the receipt of a message since dead-lettered",
        svc.delete_message(&q, first.receipt()).await,
        is_invalid_receipt,
    )?;
    let outcome = svc
        .delete_messages(&q, std::slice::from_ref(first.receipt()))
        .await
        .ctx("delete_messages")?;
    ensure!(
        outcome.deleted == 0 && outcome.rejected.len() == 1,
        "batch delete with that receipt: {outcome:?}"
    );

    // Dead-lettered explicitly with its own receipt, then deleted with the same receipt.
    let explicit = svc
        .send(&q, OutgoingMessage::new("rejected"))
        .await
        .ctx("send")?;
    let m = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(m.metadata.message_id == explicit, "another message came");
    svc.dead_letter_message(&q, m.receipt(), "rejected by the handler")
        .await
        .ctx("dead_letter_message")?;
    expect_err(
        "delete_message with the receipt that dead-lettered it",
        svc.delete_message(&q, m.receipt()).await,
        is_invalid_receipt,
    )?;

    // Both dead letters live on, once each, and redrive brings them back.
    let dead = ctx
        .eventually("both dead letters receivable", ctx.slack(), || async {
            let got = recv(&**svc, &dlq, 10, Duration::from_secs(60)).await?;
            if got.len() == 2 {
                return Ok(Some(got));
            }
            for d in &got {
                svc.change_message_visibility(&dlq, d.receipt(), Duration::ZERO)
                    .await
                    .ctx("release a dead letter")?;
            }
            Ok(None)
        })
        .await?;
    let mut ids: Vec<_> = dead.iter().map(|d| d.metadata.message_id).collect();
    ids.sort();
    let mut want = vec![over, explicit];
    want.sort();
    ensure!(ids == want, "dead letters {ids:?}, expected {want:?}");
    for d in &dead {
        svc.change_message_visibility(&dlq, d.receipt(), Duration::ZERO)
            .await
            .ctx("release a dead letter")?;
    }
    let moved = std::sync::atomic::AtomicU64::new(0);
    ctx.eventually("redrive to bring both back", ctx.slack(), || async {
        let n = svc.redrive_dead_letters(&q, 10).await.ctx("redrive")?;
        let total = moved.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        ensure!(total <= 2, "redrive moved {total} of 2 dead letters");
        Ok((total == 2).then_some(()))
    })
    .await?;
    let again = collect_n(&ctx, &**svc, &q, 2, 10, Duration::from_secs(60)).await?;
    for m in &again {
        svc.delete_message(&q, m.receipt())
            .await
            .ctx("delete after redrive")?;
    }
    Ok(())
}
