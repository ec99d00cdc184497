//! Bad input: oversize payloads and undecodable messages get typed errors and lose nothing (C10.1, C10.2).

use crate::conformance::support::prelude::*;

pub(super) async fn c10_bad_names_and_sizes(ctx: Ctx) -> CaseResultInner {
    for name in hostile_queue_names() {
        ensure!(
            matches!(
                QueueName::new(&name),
                Err(MessagingError::InvalidQueueName { .. })
            ),
            "hostile name {name:?} accepted"
        );
    }
    let svc = &ctx.service;
    let q = ctx.queue("size").await?;
    let max = svc.capabilities().max_payload_bytes;
    let too_big = Bytes::from(vec![b'x'; max + 1]);
    let err = expect_err(
        "send(max + 1 bytes)",
        svc.send(&q, OutgoingMessage::new(too_big.clone())).await,
        |e| matches!(e, MessagingError::PayloadTooLarge { .. }),
    )?;
    ensure!(
        matches!(err, MessagingError::PayloadTooLarge { size, max: m } if size == max + 1 && m == max),
        "error numbers: {err}"
    );
    expect_err(
        "send_batch with one oversize payload",
        svc.send_batch(
            &q,
            vec![OutgoingMessage::new("ok"), OutgoingMessage::new(too_big)],
        )
        .await,
        |e| matches!(e, MessagingError::PayloadTooLarge { .. }),
    )?;
    let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
    ensure!(
        stats.total() == 0,
        "a refused batch left messages: {stats:?}"
    );
    let exact = Bytes::from(vec![b'y'; max]);
    svc.send(&q, OutgoingMessage::new(exact.clone()))
        .await
        .ctx("send(exactly max_payload_bytes)")?;
    let got = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(got.payload == exact, "a max-size payload changed");
    Ok(())
}

pub(super) async fn c10_undecodable_kept(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("undec").await?;
    let id = svc
        .send(&q, OutgoingMessage::new("not json {"))
        .await
        .ctx("send")?;
    let batch = ctx
        .eventually("the undecodable message", ctx.slack(), || {
            let (svc, q, unit) = (svc.clone(), q.clone(), ctx.unit);
            async move {
                let got = svc
                    .try_receive_messages::<StepMessage>(&q, 10, unit)
                    .await
                    .ctx("try_receive_messages")?;
                Ok((!got.is_empty()).then_some(got))
            }
        })
        .await?;
    ensure!(batch.len() == 1, "{} items", batch.len());
    match &batch[0] {
        Err(bad) => ensure!(
            matches!(
                bad.error,
                MessagingError::Serialization {
                    direction: SerdeDirection::Decode,
                    ..
                }
            ) && bad.message.metadata.message_id == id,
            "wrong error {:?}",
            bad.error
        ),
        Ok(m) => return Err(format!("garbage decoded as {m:?}")),
    }
    let again = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(
        again.metadata.message_id == id && again.metadata.receive_count == 2,
        "the undecodable message was not kept: {again:?}"
    );
    Ok(())
}
