//! Helpers shared by the cases: receiving (raw and typed) with a deadline, expected errors,
//! and the checks several sections make. Each waits through the one [`Ctx::eventually`].

use std::time::{Duration, Instant};

use super::{ensure, Context, Ctx};
use crate::error::MessagingError;
use crate::message::{MessageId, QueueMessage, QueuedMessage, ReceivedMessage};
use crate::queue_name::QueueName;
use crate::service::{MessageStream, MessagingService};
use crate::typed::MessagingServiceExt;
use futures::StreamExt;

/// What the case files import.
pub(crate) mod prelude {
    pub(crate) use std::collections::HashSet;
    pub(crate) use std::sync::Arc;
    pub(crate) use std::time::{Duration, Instant};

    pub(crate) use bytes::Bytes;
    pub(crate) use futures::StreamExt;

    pub(crate) use super::super::ctx::Timing;
    pub(crate) use super::super::{ensure, CaseResultInner, Context, CountingService, Ctx};
    pub(crate) use super::*;
    pub(crate) use crate::error::{MessagingError, SerdeDirection};
    pub(crate) use crate::message::{
        CorrelationId, DeadLetterReason, MessageId, OutgoingMessage, ReceiptHandle, StepMessage,
    };
    pub(crate) use crate::queue_name::QueueName;
    pub(crate) use crate::service::{ConsumerOptions, MessagingService, QueueOptions};
    pub(crate) use crate::typed::{ConsumerExt, MessagingServiceExt};
}

pub(crate) type R<T = ()> = std::result::Result<T, String>;

pub(crate) async fn recv(
    svc: &dyn MessagingService,
    q: &QueueName,
    max: usize,
    vt: Duration,
) -> R<Vec<ReceivedMessage>> {
    svc.receive(q, max, vt).await.ctx("receive")
}

/// Receives until at least one message arrives (within `within`).
pub(crate) async fn recv_some(
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
pub(crate) async fn collect_n(
    ctx: &Ctx,
    svc: &dyn MessagingService,
    q: &QueueName,
    n: usize,
    batch: usize,
    vt: Duration,
) -> R<Vec<ReceivedMessage>> {
    let out = parking_lot::Mutex::new(Vec::new());
    let what = format!("{n} messages received");
    ctx.eventually(&what, ctx.slack(), || async {
        let got = recv(svc, q, batch, vt).await?;
        ensure!(
            got.len() <= batch,
            "receive({batch}) returned {}",
            got.len()
        );
        let mut out = out.lock();
        out.extend(got);
        Ok((out.len() >= n).then_some(()))
    })
    .await
    .map_err(|e| format!("{e} (got {})", out.lock().len()))?;
    Ok(out.into_inner())
}

/// Receives until a message arrives; returns it with the instant just before the receive
/// call that leased it (the earliest its lease can have started).
pub(crate) async fn recv_timed(
    ctx: &Ctx,
    svc: &dyn MessagingService,
    q: &QueueName,
    vt: Duration,
) -> R<(Instant, ReceivedMessage)> {
    ctx.eventually("a message to receive", ctx.slack(), || async move {
        let before = Instant::now();
        let mut got = recv(svc, q, 10, vt).await?;
        if got.is_empty() {
            return Ok(None);
        }
        ensure!(
            got.len() == 1,
            "received {} messages, expected 1",
            got.len()
        );
        Ok(Some((before, got.remove(0))))
    })
    .await
}

/// The stream's next item, or a failure when it yields nothing `within`.
pub(crate) async fn next_item(
    stream: &mut MessageStream,
    within: Duration,
) -> R<Option<crate::error::Result<ReceivedMessage>>> {
    tokio::time::timeout(within, stream.next())
        .await
        .map_err(|_| format!("the stream yielded nothing within {within:?}"))
}

/// The typed receive (`receive_messages::<T>`, which dead-letters what does not decode)
/// until at least one message arrives, within the slack.
pub(crate) async fn recv_typed<T: QueueMessage>(
    ctx: &Ctx,
    svc: &dyn MessagingService,
    q: &QueueName,
    vt: Duration,
) -> R<Vec<QueuedMessage<T>>> {
    ctx.eventually("a typed message", ctx.slack(), || async move {
        let got = svc
            .receive_messages::<T>(q, 10, vt)
            .await
            .ctx("receive_messages")?;
        Ok((!got.is_empty()).then_some(got))
    })
    .await
}

pub(crate) async fn recv_one(ctx: &Ctx, q: &QueueName, vt: Duration) -> R<ReceivedMessage> {
    let mut got = recv_some(ctx, &*ctx.service, q, 1, vt, ctx.slack()).await?;
    ensure!(got.len() == 1, "receive(1) returned {} messages", got.len());
    Ok(got.remove(0))
}

pub(crate) fn expect_err<T: std::fmt::Debug>(
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

pub(crate) fn is_not_found(e: &MessagingError) -> bool {
    matches!(e, MessagingError::QueueNotFound { .. })
}

pub(crate) fn is_invalid_receipt(e: &MessagingError) -> bool {
    matches!(e, MessagingError::InvalidReceipt { .. })
}

/// Checks a message that came back after its lease: the one expected, not before the lease
/// ended (within `tolerance`), counted as its second delivery.
pub(crate) fn came_back_counted(
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
