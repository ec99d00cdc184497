//! Declaration and round trip (C0, C1).

use crate::conformance::support::prelude::*;

pub(super) async fn c0_declaration(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let caps = svc.capabilities();
    ensure!(
        caps.pgmq_extensions == svc.pgmq().is_some(),
        "pgmq_extensions is {} but pgmq() is {}",
        caps.pgmq_extensions,
        svc.pgmq().is_some()
    );
    ensure!(
        caps.exchange_routing == svc.amqp().is_some(),
        "exchange_routing is {} but amqp() is {}",
        caps.exchange_routing,
        svc.amqp().is_some()
    );
    ensure!(caps.max_payload_bytes > 0, "max_payload_bytes is 0");
    ensure!(caps.max_batch_size > 0, "max_batch_size is 0");
    let health = svc.health_check().await.ctx("health_check")?;
    ensure!(health.is_healthy(), "health_check: {health:?}");
    let q = ctx.queue("idem").await?;
    let id = svc
        .send(&q, OutgoingMessage::new("kept"))
        .await
        .ctx("send")?;
    svc.create_queue(&q).await.ctx("second create_queue")?;
    let got = recv_one(&ctx, &q, Duration::from_secs(30)).await?;
    ensure!(
        got.metadata.message_id == id,
        "a second create_queue lost or replaced the queue's message"
    );
    Ok(())
}

pub(super) async fn c1_round_trip(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("rt").await?;
    let payloads: Vec<Bytes> = vec![
        Bytes::from_static(br#"{ "b" : 1,"a":[1, 2.50, 1e3],  "s":"\u00e9 \u0000" }"#),
        Bytes::from_static(b"plain text, not JSON"),
        Bytes::from(vec![0u8, 159, 146, 150, 255, 10, 13, 0]),
        Bytes::new(),
        OutgoingMessage::json(&StepMessage::random())
            .map_err(|e| e.to_string())?
            .payload,
    ];
    let correlation = CorrelationId::new();
    let before = chrono::Utc::now();
    let mut sent = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let mut out = OutgoingMessage::new(payload.clone());
        if i % 2 == 0 {
            out = out.with_correlation_id(correlation);
        }
        let id = svc.send(&q, out.clone()).await.ctx("send")?;
        ensure!(
            id == out.message_id,
            "send returned {id}, sent {}",
            out.message_id
        );
        sent.push(out);
    }
    let received = collect_n(&ctx, &**svc, &q, sent.len(), 10, Duration::from_secs(30)).await?;
    let after = chrono::Utc::now();
    ensure!(
        received.len() == sent.len(),
        "received {} of {}",
        received.len(),
        sent.len()
    );
    for out in &sent {
        let Some(got) = received
            .iter()
            .find(|m| m.metadata.message_id == out.message_id)
        else {
            return Err(format!("message {} was not received", out.message_id));
        };
        ensure!(
            got.payload == out.payload,
            "payload changed: sent {:?}, got {:?}",
            out.payload,
            got.payload
        );
        ensure!(
            got.metadata.correlation_id == out.correlation_id,
            "correlation id: sent {:?}, got {:?}",
            out.correlation_id,
            got.metadata.correlation_id
        );
        ensure!(
            got.metadata.receive_count == 1,
            "first receive_count is {}",
            got.metadata.receive_count
        );
        let skew = chrono::Duration::minutes(5);
        let at = got.metadata.enqueued_at;
        ensure!(
            at > before - skew && at < after + skew,
            "enqueued_at {at} outside {before}..{after}"
        );
        if let Some(expires) = got.metadata.visibility_timeout_expires {
            ensure!(
                expires > before,
                "visibility_timeout_expires {expires} is in the past"
            );
        }
        ensure!(
            got.metadata.dead_letter.is_none(),
            "a fresh message has dead-letter info"
        );
    }
    let receipts: Vec<_> = received.iter().map(|m| m.receipt().clone()).collect();
    let outcome = svc
        .delete_messages(&q, &receipts)
        .await
        .ctx("delete_messages")?;
    ensure!(
        outcome.deleted == receipts.len(),
        "deleted {} of {}",
        outcome.deleted,
        receipts.len()
    );

    let step = StepMessage::random();
    svc.send_message(&q, &step)
        .await
        .ctx("send_message::<StepMessage>")?;
    let typed = recv_typed::<StepMessage>(&ctx, &**svc, &q, Duration::from_secs(30)).await?;
    ensure!(
        typed.len() == 1 && typed[0].message == step,
        "typed round trip: {typed:?}"
    );
    ensure!(
        typed[0].metadata.correlation_id == Some(CorrelationId(step.correlation_id)),
        "the step's correlation id did not travel as metadata"
    );
    svc.ack(&q, &typed[0]).await.ctx("ack")?;
    Ok(())
}
