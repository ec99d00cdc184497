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
    let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
    ensure!(
        stats.dead_letter_count.is_none_or(|n| n == 1),
        "stats count {:?} dead letters, expected 1",
        stats.dead_letter_count
    );
    if svc.capabilities().detailed_stats {
        ensure!(
            stats.total() == 0 && stats.dead_letter_count == Some(1),
            "stats after dead-lettering: {stats:?}"
        );
    }
    // Redrive: release it in the DLQ, move it back.
    svc.change_message_visibility(&dlq, dead.receipt(), Duration::ZERO)
        .await
        .ctx("release in DLQ")?;
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
