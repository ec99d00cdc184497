//! Batches, order and concurrency (C7, C8, C11).

use crate::conformance::support::prelude::*;

pub(super) async fn c7_batches(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("batch").await?;
    let empty = svc
        .send_batch(&q, Vec::new())
        .await
        .ctx("send_batch(empty)")?;
    ensure!(empty.is_empty(), "empty batch returned ids");
    let outgoing: Vec<_> = (0..25)
        .map(|i| OutgoingMessage::new(format!("m{i}")))
        .collect();
    let expected: Vec<MessageId> = outgoing.iter().map(|m| m.message_id).collect();
    let ids = svc.send_batch(&q, outgoing).await.ctx("send_batch")?;
    ensure!(ids == expected, "send_batch ids not the sent ids in order");
    ensure!(
        recv(&**svc, &q, 0, Duration::from_secs(60))
            .await?
            .is_empty(),
        "receive(0) returned messages"
    );
    let one = recv_some(&ctx, &**svc, &q, 1, Duration::from_secs(60), ctx.slack()).await?;
    ensure!(one.len() == 1, "receive(1) returned {}", one.len());
    // Concurrent receivers on their own connections never share a lease.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let receiver = (ctx.factory)().await.ctx("factory")?;
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            receiver.receive(&q, 7, Duration::from_secs(60)).await
        }));
    }
    let mut seen: HashSet<MessageId> = one.iter().map(|m| m.metadata.message_id).collect();
    for task in tasks {
        let got = task
            .await
            .map_err(|e| e.to_string())?
            .ctx("concurrent receive")?;
        ensure!(got.len() <= 7, "receive(7) returned {}", got.len());
        for m in got {
            ensure!(
                seen.insert(m.metadata.message_id),
                "two receivers hold {}",
                m.metadata.message_id
            );
        }
    }
    let rest = collect_n(
        &ctx,
        &**svc,
        &q,
        25 - seen.len(),
        10,
        Duration::from_secs(60),
    )
    .await?;
    for m in rest {
        ensure!(
            seen.insert(m.metadata.message_id),
            "{} delivered twice within its lease",
            m.metadata.message_id
        );
    }
    ensure!(
        seen == expected.into_iter().collect::<HashSet<_>>(),
        "received ids differ from sent ids"
    );
    Ok(())
}

pub(super) async fn c8_order(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("fifo").await?;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(
            svc.send(&q, OutgoingMessage::new(format!("s{i}")))
                .await
                .ctx("send")?,
        );
    }
    let batch: Vec<_> = (0..10)
        .map(|i| OutgoingMessage::new(format!("b{i}")))
        .collect();
    sent.extend(svc.send_batch(&q, batch).await.ctx("send_batch")?);
    let got = collect_n(&ctx, &**svc, &q, 20, 3, Duration::from_secs(60)).await?;
    let order: Vec<MessageId> = got.iter().map(|m| m.metadata.message_id).collect();
    ensure!(order == sent, "received out of send order");
    Ok(())
}

pub(super) async fn c11_concurrency(ctx: Ctx) -> CaseResultInner {
    const K: usize = 4;
    const PER_PRODUCER: usize = 50;
    let total = K * PER_PRODUCER;
    let q = ctx.queue("conc").await?;
    let mut producers = Vec::new();
    for p in 0..K {
        let svc = (ctx.factory)().await.ctx("factory")?;
        let q = q.clone();
        producers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..PER_PRODUCER {
                ids.push(
                    svc.send(&q, OutgoingMessage::new(format!("p{p}-{i}")))
                        .await?,
                );
            }
            Ok::<_, MessagingError>(ids)
        }));
    }
    let seen = Arc::new(parking_lot::Mutex::new(HashSet::new()));
    let duplicate = Arc::new(parking_lot::Mutex::new(None));
    let deadline = Instant::now() + ctx.slack() * 5;
    let mut consumers = Vec::new();
    for _ in 0..K {
        let svc = (ctx.factory)().await.ctx("factory")?;
        let (q, seen, duplicate) = (q.clone(), seen.clone(), duplicate.clone());
        consumers.push(tokio::spawn(async move {
            while seen.lock().len() < total && Instant::now() < deadline {
                let got = svc.receive(&q, 10, Duration::from_secs(120)).await?;
                if got.is_empty() {
                    svc.wait_for_messages(&q, Duration::from_millis(50)).await;
                    continue;
                }
                let receipts: Vec<_> = got.iter().map(|m| m.receipt().clone()).collect();
                {
                    let mut seen = seen.lock();
                    for m in &got {
                        if !seen.insert(m.metadata.message_id) {
                            *duplicate.lock() = Some(m.metadata.message_id);
                        }
                    }
                }
                let mut outcome = svc.delete_messages(&q, &receipts).await?;
                if !outcome.rejected.is_empty() {
                    return Err(outcome.rejected.remove(0).1);
                }
            }
            Ok::<_, MessagingError>(())
        }));
    }
    let mut sent = HashSet::new();
    for p in producers {
        sent.extend(p.await.map_err(|e| e.to_string())?.ctx("concurrent send")?);
    }
    for c in consumers {
        c.await
            .map_err(|e| e.to_string())?
            .ctx("concurrent receive/delete")?;
    }
    ensure!(
        sent.len() == total,
        "{} distinct ids for {total} sends",
        sent.len()
    );
    if let Some(id) = *duplicate.lock() {
        return Err(format!("{id} was delivered twice within one lease"));
    }
    let seen = seen.lock().clone();
    ensure!(
        seen == sent,
        "delivered {} of {total}; missing {:?}",
        seen.len(),
        sent.difference(&seen).take(3).collect::<Vec<_>>()
    );
    let stats = ctx.service.get_queue_stats(&q).await.ctx("stats")?;
    ensure!(
        stats.total() == 0,
        "messages left after all were acked: {stats:?}"
    );
    Ok(())
}

/// A batch over `max_batch_size` is either sent whole (split into several round trips) or
/// refused with a permanent error and nothing sent: never half-sent.
pub(super) async fn c7_oversize_batch(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("bigbatch").await?;
    let n = svc.capabilities().max_batch_size + 1;
    let outgoing: Vec<_> = (0..n)
        .map(|i| OutgoingMessage::new(format!("{i}")))
        .collect();
    let expected: Vec<MessageId> = outgoing.iter().map(|m| m.message_id).collect();
    match svc.send_batch(&q, outgoing).await {
        Ok(ids) => {
            ensure!(
                ids == expected,
                "send_batch of {n} returned {} ids, not the sent ids in order",
                ids.len()
            );
            ctx.eventually(
                &format!("all {n} messages of the split batch visible"),
                ctx.slack() * 3,
                || async {
                    let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
                    ensure!(
                        stats.message_count <= n as u64,
                        "{} visible after a batch of {n}",
                        stats.message_count
                    );
                    Ok((stats.message_count == n as u64).then_some(()))
                },
            )
            .await?;
        }
        Err(e) => {
            ensure!(
                !e.is_retryable(),
                "a batch over max_batch_size was refused with a retryable error: {e}"
            );
            tokio::time::sleep(ctx.unit).await;
            let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
            ensure!(
                stats.total() == 0,
                "a refused batch over max_batch_size left {} messages",
                stats.total()
            );
            ensure!(
                recv(&**svc, &q, 10, Duration::from_secs(60))
                    .await?
                    .is_empty(),
                "a refused batch over max_batch_size left receivable messages"
            );
        }
    }
    Ok(())
}
