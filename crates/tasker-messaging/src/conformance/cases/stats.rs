//! Stats and administration (C9).

use crate::conformance::support::prelude::*;

pub(super) async fn c9_stats_admin(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let caps = svc.capabilities().clone();
    let q = ctx.queue("stats").await?;
    let batch = (0..3)
        .map(|i| OutgoingMessage::new(format!("v{i}")))
        .collect();
    svc.send_batch(&q, batch).await.ctx("send_batch")?;
    if caps.delayed_send {
        svc.send(
            &q,
            OutgoingMessage::new("d").with_delay(Duration::from_secs(600)),
        )
        .await
        .ctx("delayed send")?;
    }
    let _held = recv_one(&ctx, &q, Duration::from_secs(600)).await?;
    let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
    ensure!(stats.queue_name == q, "stats for {}", stats.queue_name);
    ensure!(
        stats.message_count == 2,
        "visible count {} (expected 2): {stats:?}",
        stats.message_count
    );
    if caps.detailed_stats {
        ensure!(stats.in_flight_count == Some(1), "in-flight: {stats:?}");
        let delayed = u64::from(caps.delayed_send);
        ensure!(stats.delayed_count == Some(delayed), "delayed: {stats:?}");
        ensure!(
            stats.oldest_message_age_seconds.is_some_and(|a| a >= 0.0),
            "oldest age: {stats:?}"
        );
    }
    let purged = svc.purge_queue(&q).await.ctx("purge_queue")?;
    let after = svc.get_queue_stats(&q).await.ctx("stats after purge")?;
    ensure!(after.message_count == 0, "visible after purge: {after:?}");
    if caps.detailed_stats {
        ensure!(
            purged == stats.total() - after.total(),
            "purge returned {purged}, but the count fell from {} to {}",
            stats.total(),
            after.total()
        );
        ensure!(
            after.oldest_message_age_seconds.is_none() || after.total() > 0,
            "oldest age on an empty queue: {after:?}"
        );
    } else {
        ensure!(
            purged >= 2,
            "purge returned {purged}, at least 2 were visible"
        );
    }
    svc.delete_queue(&q).await.ctx("delete_queue")?;
    let never = ctx.queue_name("never");
    for missing in [&q, &never] {
        expect_err("stats", svc.get_queue_stats(missing).await, is_not_found)?;
        expect_err(
            "send",
            svc.send(missing, OutgoingMessage::new("x")).await,
            is_not_found,
        )?;
        expect_err(
            "send_batch",
            svc.send_batch(missing, vec![OutgoingMessage::new("x")])
                .await,
            is_not_found,
        )?;
        expect_err(
            "receive",
            svc.receive(missing, 1, ctx.unit).await,
            is_not_found,
        )?;
        expect_err("purge", svc.purge_queue(missing).await, is_not_found)?;
        expect_err(
            "delete_queue",
            svc.delete_queue(missing).await,
            is_not_found,
        )?;
    }
    Ok(())
}

/// Every operation on a queue that does not exist (deleted, or never created) fails with
/// `QueueNotFound`; only `create_queue` creates queues. A wait on it sleeps out its time.
pub(super) async fn c9_missing_queue_everywhere(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let caps = svc.capabilities().clone();
    let q = ctx.queue("gone").await?;
    svc.send(&q, OutgoingMessage::new("x")).await.ctx("send")?;
    let held = recv_one(&ctx, &q, Duration::from_secs(600)).await?;
    svc.delete_queue(&q).await.ctx("delete_queue")?;
    let never = ctx.queue_name("never");
    let receipt = held.receipt();
    // Every operation is tried; the case lists all that did not give QueueNotFound.
    let mut wrong = Vec::new();
    for missing in [&q, &never] {
        let on = |op: &str| format!("{op} on missing queue {missing}");
        note(
            &mut wrong,
            expect_err(
                &on("delete_message"),
                svc.delete_message(missing, receipt).await,
                is_not_found,
            ),
        );
        note(
            &mut wrong,
            expect_err(
                &on("delete_messages"),
                svc.delete_messages(missing, std::slice::from_ref(receipt))
                    .await
                    .map(|o| (o.deleted, o.rejected.len())),
                is_not_found,
            ),
        );
        note(
            &mut wrong,
            expect_err(
                &on("change_message_visibility"),
                svc.change_message_visibility(missing, receipt, Duration::ZERO)
                    .await,
                is_not_found,
            ),
        );
        if caps.dead_letter_queues {
            note(
                &mut wrong,
                expect_err(
                    &on("dead_letter_message"),
                    svc.dead_letter_message(missing, receipt, "x").await,
                    is_not_found,
                ),
            );
            note(
                &mut wrong,
                expect_err(
                    &on("redrive_dead_letters"),
                    svc.redrive_dead_letters(missing, 10).await,
                    is_not_found,
                ),
            );
        }
        note(
            &mut wrong,
            expect_err(
                &on("send_message (typed)"),
                svc.send_message(missing, &StepMessage::random()).await,
                is_not_found,
            ),
        );
        note(
            &mut wrong,
            expect_err(
                &on("receive_messages (typed)"),
                svc.receive_messages::<StepMessage>(missing, 1, ctx.unit)
                    .await,
                is_not_found,
            ),
        );
        let mut stream = svc.consume(missing, ConsumerOptions::default());
        match next_item(&mut stream, ctx.slack()).await {
            Ok(Some(Err(e))) if is_not_found(&e) => {}
            other => wrong.push(format!(
                "{}: first item {:?}, expected QueueNotFound",
                on("consume"),
                other.map(|o| o.map(|r| r.map(|m| m.metadata.message_id)))
            )),
        }
        let max_wait = Duration::from_millis(200);
        let started = Instant::now();
        svc.wait_for_messages(missing, max_wait).await;
        if started.elapsed() + Duration::from_millis(20) < max_wait {
            wrong.push(format!(
                "{} returned after {:?}, before its {max_wait:?} (a loop around it would spin)",
                on("wait_for_messages"),
                started.elapsed()
            ));
        }
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok(())
}

fn note<T>(wrong: &mut Vec<String>, checked: R<T>) {
    if let Err(why) = checked {
        wrong.push(why);
    }
}

/// `initialize` is idempotent: called again on a working service, it succeeds and the queues
/// and messages stay.
pub(super) async fn c9_initialize_idempotent(ctx: Ctx) -> CaseResultInner {
    let svc = &ctx.service;
    let q = ctx.queue("init").await?;
    let id = svc
        .send(&q, OutgoingMessage::new("before re-initialize"))
        .await
        .ctx("send")?;
    svc.initialize().await.ctx("initialize again")?;
    let (a, b) = tokio::join!(svc.initialize(), svc.initialize());
    a.ctx("concurrent initialize")?;
    b.ctx("concurrent initialize")?;
    let m = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(
        m.metadata.message_id == id && m.metadata.receive_count == 1,
        "a message sent before initialize was lost or touched"
    );
    svc.delete_message(&q, m.receipt())
        .await
        .ctx("delete after initialize")?;
    Ok(())
}
