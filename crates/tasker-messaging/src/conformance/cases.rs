//! The cases, one function each, numbered as in `docs/semantics.md`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;

use super::{ensure, CaseResultInner, Context, CountingService, Ctx};
use crate::error::{MessagingError, SerdeDirection};
use crate::message::{
    CorrelationId, DeadLetterReason, MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage,
    StepMessage,
};
use crate::queue_name::{hostile_queue_names, QueueName};
use crate::service::{Capability, ConsumerOptions, MessagingService, QueueOptions};
use crate::typed::{ConsumerExt, MessagingServiceExt};

pub(crate) struct Case {
    pub id: &'static str,
    pub title: &'static str,
    /// Capabilities the case exercises; absent ones skip it.
    pub needs: &'static [Capability],
    pub run: fn(Ctx) -> BoxFuture<'static, CaseResultInner>,
}

macro_rules! case {
    ($id:literal, $title:literal, [$($cap:ident),*], $f:ident) => {
        Case {
            id: $id,
            title: $title,
            needs: &[$(Capability::$cap),*],
            run: |ctx| Box::pin($f(ctx)),
        }
    };
}

pub(crate) fn all() -> Vec<Case> {
    vec![
        case!(
            "C0",
            "declared capabilities match accessors; healthy; create is idempotent",
            [],
            c0_declaration
        ),
        case!(
            "C1",
            "round trip keeps payload bytes, ids; first receive_count is 1",
            [],
            c1_round_trip
        ),
        case!(
            "C2",
            "a lease hides the message from every receiver until it ends",
            [],
            c2_leases
        ),
        case!("C3.1", "delete is permanent and idempotent", [], c3_delete),
        case!(
            "C3.2",
            "a stale receipt cannot touch the newer delivery",
            [ReceiptFencing],
            c3_stale_receipt
        ),
        case!(
            "C4.1",
            "visibility 0 releases the message at once",
            [],
            c4_release_now
        ),
        case!(
            "C4.2",
            "visibility d delays redelivery; extending keeps it hidden",
            [LeaseExtension],
            c4_delay_and_extend
        ),
        case!(
            "C5",
            "a delayed send is not receivable before its delay",
            [DelayedSend],
            c5_delayed_send
        ),
        case!(
            "C6.1",
            "max_receive_count moves the message intact to the DLQ; redrive",
            [DeadLetterQueues],
            c6_max_receive
        ),
        case!(
            "C6.2",
            "an explicit dead-letter keeps the reason",
            [DeadLetterQueues],
            c6_explicit
        ),
        case!(
            "C7",
            "batches: ids in order, receive <= max, no shared leases",
            [],
            c7_batches
        ),
        case!(
            "C8",
            "one producer's messages come out in send order",
            [FifoOrder],
            c8_order
        ),
        case!(
            "C9",
            "stats count states; purge counts; missing queue is QueueNotFound",
            [],
            c9_stats_admin
        ),
        case!(
            "C10.1",
            "hostile names and oversize payloads: typed errors, nothing sent",
            [],
            c10_bad_names_and_sizes
        ),
        case!(
            "C10.2",
            "an undecodable payload is a typed error and keeps its lease",
            [],
            c10_undecodable_kept
        ),
        case!(
            "C10.3",
            "typed receive dead-letters an undecodable payload",
            [DeadLetterQueues],
            c10_undecodable_dead_lettered
        ),
        case!(
            "C10.4",
            "malformed receipts are InvalidReceipt and lose nothing",
            [],
            c10_bad_receipts
        ),
        case!(
            "C11",
            "K producers and K consumers: every message once, none lost",
            [],
            c11_concurrency
        ),
        case!(
            "C12",
            "stream delivers continuously, waits without spinning, stops on drop",
            [],
            c12_stream
        ),
        case!(
            "C13",
            "wait_for_messages wakes on a send from another connection",
            [WakeupNotifications],
            c13_wakeup
        ),
        case!(
            "C14",
            "a message taken from a dropped stream keeps its lease, then returns counted",
            [],
            c14_stream_lease_ends
        ),
    ]
}

type R<T = ()> = std::result::Result<T, String>;

async fn recv(
    svc: &dyn MessagingService,
    q: &QueueName,
    max: usize,
    vt: Duration,
) -> R<Vec<ReceivedMessage>> {
    svc.receive(q, max, vt).await.ctx("receive")
}

/// Receives until at least one message arrives (within `within`).
async fn recv_some(
    ctx: &Ctx,
    svc: &dyn MessagingService,
    q: &QueueName,
    max: usize,
    vt: Duration,
    within: Duration,
) -> R<Vec<ReceivedMessage>> {
    ctx.eventually("a message to receive", within, || async move {
        let got = recv(svc, q, max, vt).await?;
        Ok((!got.is_empty()).then_some(got))
    })
    .await
}

/// Receives until `n` messages arrived (within the slack), `batch` at a time.
async fn collect_n(
    ctx: &Ctx,
    svc: &dyn MessagingService,
    q: &QueueName,
    n: usize,
    batch: usize,
    vt: Duration,
) -> R<Vec<ReceivedMessage>> {
    let deadline = Instant::now() + ctx.slack();
    let mut out = Vec::new();
    while out.len() < n {
        let got = recv(svc, q, batch, vt).await?;
        ensure!(
            got.len() <= batch,
            "receive({batch}) returned {}",
            got.len()
        );
        if got.is_empty() {
            ensure!(
                Instant::now() < deadline,
                "received {} of {n} messages within {:?}",
                out.len(),
                ctx.slack()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        out.extend(got);
    }
    Ok(out)
}

/// Receives until a message arrives; returns it with the instant just before the receive
/// call that leased it (the earliest its lease can have started).
async fn recv_timed(
    ctx: &Ctx,
    svc: &dyn MessagingService,
    q: &QueueName,
    vt: Duration,
) -> R<(Instant, ReceivedMessage)> {
    let deadline = Instant::now() + ctx.slack();
    loop {
        let before = Instant::now();
        let mut got = recv(svc, q, 10, vt).await?;
        if !got.is_empty() {
            ensure!(
                got.len() == 1,
                "received {} messages, expected 1",
                got.len()
            );
            return Ok((before, got.remove(0)));
        }
        ensure!(
            Instant::now() < deadline,
            "no message within {:?}",
            ctx.slack()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn recv_one(ctx: &Ctx, q: &QueueName, vt: Duration) -> R<ReceivedMessage> {
    let mut got = recv_some(ctx, &*ctx.service, q, 1, vt, ctx.slack()).await?;
    ensure!(got.len() == 1, "receive(1) returned {} messages", got.len());
    Ok(got.remove(0))
}

fn expect_err<T: std::fmt::Debug>(
    what: &str,
    result: crate::error::Result<T>,
    matches: impl Fn(&MessagingError) -> bool,
) -> R<MessagingError> {
    match result {
        Err(e) if matches(&e) => Ok(e),
        Err(e) => Err(format!("{what}: wrong error: {e:?}")),
        Ok(v) => Err(format!("{what}: expected an error, got Ok({v:?})")),
    }
}

fn is_not_found(e: &MessagingError) -> bool {
    matches!(e, MessagingError::QueueNotFound { .. })
}

fn is_invalid_receipt(e: &MessagingError) -> bool {
    matches!(e, MessagingError::InvalidReceipt { .. })
}

async fn c0_declaration(ctx: Ctx) -> CaseResultInner {
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

async fn c1_round_trip(ctx: Ctx) -> CaseResultInner {
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
    let typed = ctx
        .eventually("the typed message", ctx.slack(), || {
            let (svc, q) = (svc.clone(), q.clone());
            async move {
                let got = svc
                    .receive_messages::<StepMessage>(&q, 10, Duration::from_secs(30))
                    .await
                    .ctx("receive_messages::<StepMessage>")?;
                Ok((!got.is_empty()).then_some(got))
            }
        })
        .await?;
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

/// Checks a message that came back after its lease: the one expected, not before the lease
/// ended (within `tolerance`), counted as its second delivery.
fn came_back_counted(
    back: &[ReceivedMessage],
    id: MessageId,
    waited: Duration,
    lease: Duration,
    tolerance: Duration,
) -> R {
    ensure!(
        back.len() == 1 && back[0].metadata.message_id == id,
        "{} message(s) came back, not the one leased",
        back.len()
    );
    ensure!(
        waited + tolerance >= lease,
        "came back after {waited:?}, before the {lease:?} lease ended"
    );
    ensure!(
        back[0].metadata.receive_count == 2,
        "receive_count after a lease ended is {}, expected 2",
        back[0].metadata.receive_count
    );
    Ok(())
}

async fn c2_leases(ctx: Ctx) -> CaseResultInner {
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

async fn c3_delete(ctx: Ctx) -> CaseResultInner {
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

async fn c3_stale_receipt(ctx: Ctx) -> CaseResultInner {
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

async fn c4_release_now(ctx: Ctx) -> CaseResultInner {
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

async fn c4_delay_and_extend(ctx: Ctx) -> CaseResultInner {
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

async fn c5_delayed_send(ctx: Ctx) -> CaseResultInner {
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

async fn c6_max_receive(ctx: Ctx) -> CaseResultInner {
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
                    let got = svc.receive(&dlq, 10, Duration::from_secs(60)).await;
                    match got {
                        Ok(mut got) if !got.is_empty() => Ok(Some(got.remove(0))),
                        Ok(_) | Err(MessagingError::QueueNotFound { .. }) => Ok(None),
                        Err(e) => Err(format!("receive from the DLQ: {e}")),
                    }
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
    if svc.capabilities().detailed_stats {
        let stats = svc.get_queue_stats(&q).await.ctx("stats")?;
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

async fn c6_explicit(ctx: Ctx) -> CaseResultInner {
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

async fn c7_batches(ctx: Ctx) -> CaseResultInner {
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

async fn c8_order(ctx: Ctx) -> CaseResultInner {
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

async fn c9_stats_admin(ctx: Ctx) -> CaseResultInner {
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

async fn c10_bad_names_and_sizes(ctx: Ctx) -> CaseResultInner {
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

async fn c10_undecodable_kept(ctx: Ctx) -> CaseResultInner {
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

async fn c10_undecodable_dead_lettered(ctx: Ctx) -> CaseResultInner {
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
    let mut good = Vec::new();
    let deadline = Instant::now() + ctx.slack();
    while good.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the decodable message never arrived"
        );
        good.extend(
            svc.receive_messages::<StepMessage>(&q, 10, Duration::from_secs(60))
                .await
                .ctx("receive_messages")?,
        );
        if good.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
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

async fn c10_bad_receipts(ctx: Ctx) -> CaseResultInner {
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

async fn c11_concurrency(ctx: Ctx) -> CaseResultInner {
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

async fn c12_stream(ctx: Ctx) -> CaseResultInner {
    let q = ctx.queue("stream").await?;
    let counting = Arc::new(CountingService::new(ctx.service.clone()));
    let max_idle = Duration::from_millis(100);
    let options = ConsumerOptions {
        batch_size: 5,
        visibility_timeout: Duration::from_secs(120),
        min_idle_backoff: Duration::from_millis(1),
        max_idle_backoff: max_idle,
    };
    let mut stream = counting.consume(&q, options);
    let producer = {
        let (svc, q) = (ctx.service.clone(), q.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for round in 0..2 {
                for i in 0..5 {
                    ids.push(
                        svc.send(&q, OutgoingMessage::new(format!("r{round}-{i}")))
                            .await?,
                    );
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok::<_, MessagingError>(ids)
        })
    };
    let mut got = HashSet::new();
    while got.len() < 10 {
        let next = tokio::time::timeout(ctx.slack() * 2, stream.next())
            .await
            .map_err(|_| format!("the stream stalled after {} of 10 messages", got.len()))?;
        let Some(item) = next else {
            return Err("the stream ended while messages were pending".into());
        };
        let m = item.ctx("stream item")?;
        ctx.service
            .delete_message(&q, m.receipt())
            .await
            .ctx("delete")?;
        got.insert(m.metadata.message_id);
    }
    let sent: HashSet<_> = producer
        .await
        .map_err(|e| e.to_string())?
        .ctx("send")?
        .into_iter()
        .collect();
    ensure!(
        got == sent,
        "the stream delivered other messages than were sent"
    );

    // Idle: the stream is polled for a second; it must wait, not spin.
    let idle = Duration::from_secs(1);
    let before = counting.receives();
    let polled = tokio::time::timeout(idle, stream.next()).await;
    ensure!(
        polled.is_err(),
        "an idle stream yielded {:?}",
        polled.map(|o| o.map(|r| r.is_ok()))
    );
    let idle_receives = counting.receives() - before;
    // 1 s at <= 100 ms per wait, plus the ramp from 1 ms: about 17; spinning would be thousands.
    ensure!(
        idle_receives <= 30,
        "an idle stream called receive {idle_receives} times in {idle:?}"
    );

    // Dropped: nothing keeps receiving in the background, nothing is taken.
    drop(stream);
    let at_drop = counting.receives();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        counting.receives() == at_drop,
        "receive was called after the stream was dropped"
    );
    let id = ctx
        .service
        .send(&q, OutgoingMessage::new("after drop"))
        .await
        .ctx("send")?;
    let m = recv_one(&ctx, &q, Duration::from_secs(60)).await?;
    ensure!(
        m.metadata.message_id == id && m.metadata.receive_count == 1,
        "a dropped stream took a message"
    );

    // Waiting on a queue that does not exist sleeps out its time: a loop around it never spins.
    let missing = ctx.queue_name("missing");
    let max_wait = Duration::from_millis(300);
    let started = Instant::now();
    ctx.service.wait_for_messages(&missing, max_wait).await;
    ensure!(
        started.elapsed() + Duration::from_millis(20) >= max_wait,
        "wait_for_messages on a missing queue returned after {:?}, before its {max_wait:?}",
        started.elapsed()
    );
    Ok(())
}

async fn c13_wakeup(ctx: Ctx) -> CaseResultInner {
    let svc = ctx.service.clone();
    let other = (ctx.factory)().await.ctx("factory (second sender)")?;
    let q = ctx.queue("wake").await?;
    // Far longer than the case may take: returning by timeout fails it.
    let max_wait = Duration::from_secs(60);
    let waiting = {
        let (svc, q) = (svc.clone(), q.clone());
        tokio::spawn(async move { svc.wait_for_messages(&q, max_wait).await })
    };
    // The queue is empty: the wait must still be waiting (a wait that returns at once would
    // make every idle loop a spin).
    tokio::time::sleep(ctx.unit * 2).await;
    ensure!(
        !waiting.is_finished(),
        "wait_for_messages returned on an empty queue with nothing sent"
    );
    let id = other
        .send(&q, OutgoingMessage::new("wake up"))
        .await
        .ctx("send (other connection)")?;
    let sent_at = Instant::now();
    let within = ctx.slack();
    match tokio::time::timeout(within, waiting).await {
        Ok(joined) => joined.map_err(|e| format!("the waiting task failed: {e}"))?,
        Err(_) => {
            return Err(format!(
                "wait_for_messages did not wake within {within:?} of a send"
            ))
        }
    }
    let woke_after = sent_at.elapsed();
    // The wait did not use up a delivery: the waiting service receives the message now, as
    // its first delivery.
    let got = recv(&*svc, &q, 10, Duration::from_secs(30)).await?;
    ensure!(
        got.len() == 1 && got[0].metadata.message_id == id,
        "after the wake the waiting service received {} message(s), not the one sent",
        got.len()
    );
    ensure!(
        got[0].metadata.receive_count == 1,
        "the woken receive has receive_count {} (want 1)",
        got[0].metadata.receive_count
    );
    svc.delete_message(&q, got[0].receipt())
        .await
        .ctx("delete")?;
    ensure!(
        woke_after < within,
        "the wait woke {woke_after:?} after the send"
    );

    // A caller that gives up on a wait (a timeout around it) loses nothing: the next message
    // sent is received by the waiting service, as a first delivery. (One early return is
    // allowed, e.g. a wakeup left over from the last send; returning at once again and again
    // on an empty queue would make a loop spin.)
    let mut gave_up = false;
    for _ in 0..3 {
        let wait = svc.wait_for_messages(&q, Duration::from_secs(2));
        if tokio::time::timeout(ctx.unit / 2, wait).await.is_err() {
            gave_up = true;
            break;
        }
    }
    ensure!(
        gave_up,
        "wait_for_messages on an empty queue returned at once three times in a row"
    );
    let id = other
        .send(&q, OutgoingMessage::new("after a given-up wait"))
        .await
        .ctx("send (other connection)")?;
    let got = recv_some(&ctx, &*svc, &q, 10, Duration::from_secs(30), ctx.slack()).await?;
    ensure!(
        got.len() == 1 && got[0].metadata.message_id == id && got[0].metadata.receive_count == 1,
        "after a given-up wait the message was not received as its first delivery"
    );
    svc.delete_message(&q, got[0].receipt())
        .await
        .ctx("delete")?;
    Ok(())
}

async fn c14_stream_lease_ends(ctx: Ctx) -> CaseResultInner {
    let svc = ctx.service.clone();
    let other = (ctx.factory)().await.ctx("factory (second receiver)")?;
    let q = ctx.queue("streamlease").await?;
    let id = svc
        .send(&q, OutgoingMessage::new("taken by a stream"))
        .await
        .ctx("send")?;
    let lease = ctx.unit * 3;
    let options = ConsumerOptions {
        batch_size: 1,
        visibility_timeout: lease,
        ..ConsumerOptions::default()
    };
    let mut stream = svc.consume(&q, options);
    let first = tokio::time::timeout(ctx.slack(), stream.next())
        .await
        .map_err(|_| "the stream delivered nothing".to_string())?
        .ok_or("the stream ended")?
        .ctx("stream item")?;
    let leased_at = Instant::now();
    ensure!(
        first.metadata.message_id == id && first.metadata.receive_count == 1,
        "the stream's first delivery is the message with receive_count 1 (got {})",
        first.metadata.receive_count
    );
    // The stream is dropped; the message it yielded keeps its lease (hidden from everyone)
    // until the lease ends, then any receiver gets it, counted as its second delivery.
    drop(stream);
    ensure!(
        recv(&*other, &q, 10, Duration::from_secs(30))
            .await?
            .is_empty()
            || leased_at.elapsed() >= lease,
        "dropping the stream ended the lease of a message it had yielded"
    );
    let back = recv_some(
        &ctx,
        &*other,
        &q,
        10,
        Duration::from_secs(30),
        lease + ctx.slack(),
    )
    .await?;
    came_back_counted(&back, id, leased_at.elapsed(), lease, ctx.unit / 4)?;
    other
        .delete_message(&q, back[0].receipt())
        .await
        .ctx("delete")?;
    Ok(())
}
