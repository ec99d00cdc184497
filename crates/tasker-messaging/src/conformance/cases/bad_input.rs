//! Bad input: oversize payloads and undecodable messages get typed errors and lose nothing (C10.1, C10.2).

use crate::conformance::support::prelude::*;

/// A JSON string whose encoding is exactly `bytes` long (the quotes count).
fn json_of_len(bytes: usize) -> serde_json::Value {
    serde_json::Value::String("z".repeat(bytes.saturating_sub(2)))
}

fn is_too_large(e: &MessagingError) -> bool {
    matches!(e, MessagingError::PayloadTooLarge { .. })
}

/// The size limit holds on every path that sends: single, batch, typed single and batch, and
/// the provider's transactional send where it declares one. A refused batch sends nothing;
/// exactly `max_payload_bytes` goes through every path intact. (Hostile queue names never
/// reach a provider: `QueueName` refuses them, tested in `queue_name.rs`.)
pub(super) async fn c10_payload_sizes(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("size").await?;
    let max = svc.capabilities().max_payload_bytes;
    let too_big = Bytes::from(vec![b'x'; max + 1]);
    let ok = || OutgoingMessage::new("ok");
    let err = expect_err(
        "send(max + 1 bytes)",
        svc.send(&q, OutgoingMessage::new(too_big.clone())).await,
        is_too_large,
    )?;
    ensure!(
        matches!(err, MessagingError::PayloadTooLarge { size, max: m } if size == max + 1 && m == max),
        "error numbers: {err}"
    );
    expect_err(
        "send_batch with one oversize payload",
        svc.send_batch(&q, vec![ok(), OutgoingMessage::new(too_big.clone())])
            .await,
        is_too_large,
    )?;
    let err = expect_err(
        "send_message (typed) of max + 1 bytes",
        svc.send_message(&q, &json_of_len(max + 1)).await,
        is_too_large,
    )?;
    ensure!(
        matches!(err, MessagingError::PayloadTooLarge { size, .. } if size == max + 1),
        "typed error numbers: {err}"
    );
    expect_err(
        "send_messages (typed batch) with one oversize message",
        svc.send_messages(&q, &[json_of_len(2), json_of_len(max + 1)])
            .await,
        is_too_large,
    )?;
    let transactional = match (
        &ctx.hooks.transactional_send,
        svc.capabilities().transactional_send,
    ) {
        (Some(send), true) => Some(send.clone()),
        (None, true) => {
            return Err(
                "the provider declares transactional_send but its instantiation gives \
                        no Suite::transactional_send to check it with"
                    .into(),
            )
        }
        (_, false) => None,
    };
    if let Some(send) = &transactional {
        expect_err(
            "transactional send of max + 1 bytes",
            send(q.clone(), vec![OutgoingMessage::new(too_big.clone())]).await,
            is_too_large,
        )?;
        expect_err(
            "transactional batch with one oversize payload",
            send(q.clone(), vec![ok(), OutgoingMessage::new(too_big)]).await,
            is_too_large,
        )?;
    }

    // Exactly the limit passes every path, and nothing refused above was sent.
    let exact = Bytes::from(vec![b'y'; max]);
    let mut sent = vec![svc
        .send(&q, OutgoingMessage::new(exact.clone()))
        .await
        .ctx("send(exactly max_payload_bytes)")?];
    sent.extend(
        svc.send_batch(&q, vec![OutgoingMessage::new(exact.clone())])
            .await
            .ctx("send_batch(exactly max_payload_bytes)")?,
    );
    let typed_exact = json_of_len(max);
    sent.push(
        svc.send_message(&q, &typed_exact)
            .await
            .ctx("send_message (typed) of exactly max_payload_bytes")?,
    );
    if let Some(send) = &transactional {
        sent.extend(
            send(q.clone(), vec![OutgoingMessage::new(exact.clone())])
                .await
                .ctx("transactional send of exactly max_payload_bytes")?,
        );
    }
    let got = collect_n(&ctx, &**svc, &q, sent.len(), 10, Duration::from_secs(60)).await?;
    let typed_bytes = serde_json::to_vec(&typed_exact).map_err(|e| e.to_string())?;
    for m in &got {
        ensure!(
            sent.contains(&m.metadata.message_id),
            "a message of a refused send was delivered ({} bytes)",
            m.payload.len()
        );
        ensure!(
            m.payload == exact || m.payload[..] == typed_bytes[..],
            "a max-size payload changed ({} bytes)",
            m.payload.len()
        );
    }
    tokio::time::sleep(ctx.unit).await;
    let extra = recv(&**svc, &q, 10, Duration::from_secs(60)).await?;
    ensure!(
        extra.is_empty(),
        "{} message(s) of refused sends were delivered",
        extra.len()
    );
    Ok(())
}

pub(super) async fn c10_undecodable_kept(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let other = (ctx.factory)().await.ctx("factory (second receiver)")?;
    let q = ctx.queue("undec").await?;
    let id = svc
        .send(&q, OutgoingMessage::new("not json {"))
        .await
        .ctx("send")?;
    let lease = ctx.unit * 3;
    let (leased_at, batch) = ctx
        .eventually("the undecodable message", ctx.slack(), || async {
            let before = Instant::now();
            let got = svc
                .try_receive_messages::<StepMessage>(&q, 10, lease)
                .await
                .ctx("try_receive_messages")?;
            Ok((!got.is_empty()).then_some((before, got)))
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
    // Kept means leased: no receiver gets it before the lease ends (an immediate nack
    // would hand it out at once), then it comes back counted.
    for receiver in [&**svc, &*other] {
        let got = recv(receiver, &q, 10, Duration::from_secs(60)).await?;
        ensure!(
            got.is_empty() || leased_at.elapsed() >= lease,
            "the undecodable message was receivable before its lease ended"
        );
    }
    let again = recv_some(
        &ctx,
        &*other,
        &q,
        10,
        Duration::from_secs(60),
        lease + ctx.slack(),
    )
    .await?;
    came_back_counted(
        &again,
        id,
        leased_at.elapsed(),
        lease,
        Duration::from_millis(50),
    )?;
    Ok(())
}
