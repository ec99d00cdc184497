//! The native push consumer: `basic.consume` with prefetch, every delivery a lease like a
//! received message (same receipts, same visibility timeout, same reaper).
//!
//! When the connection or channel breaks, the stream reconnects and subscribes again by
//! itself; what it held unacked is requeued by the broker and delivered again. A missing queue
//! ends the stream with `QueueNotFound`. Dropping the stream cancels the consumer and gives
//! back what was prefetched but never yielded without counting it (nobody saw it; see
//! `Inner::release_leases`); `shutdown` waits for that; nothing keeps running.
//!
//! The stream is a hand-written state machine rather than `futures::stream::unfold`: unfold
//! moves its whole state in and out of a fresh future for every item, which callgrind showed
//! as a tenth of the provider's own work per message at stream rates.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::time::Instant;

use super::channel::LeaseChannel;
use super::leases::Lease;
use super::{codec, Inner};
use crate::error::{MessagingError, Result};
use crate::message::ReceivedMessage;
use crate::queue_name::QueueName;
use crate::service::{ConsumerOptions, MessageStream};

static NEXT_CONSUMER: AtomicU64 = AtomicU64::new(1);

/// Subscribes to `queue` on `channel` under a fresh consumer tag; returns the tag (for the
/// cancel) and the consumer. Tags only need to be unique on their channel, and lapin hashes
/// the tag (SipHash) several times per delivery: `tk<n>` is measurably cheaper than a UUID.
pub(super) async fn basic_consume(
    channel: &lapin::Channel,
    queue: &QueueName,
) -> lapin::Result<(String, lapin::Consumer)> {
    let tag = format!("tk{}", NEXT_CONSUMER.fetch_add(1, Ordering::Relaxed));
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((tag, consumer))
}

struct Subscription {
    inner: Arc<Inner>,
    queue: QueueName,
    channel: Arc<LeaseChannel>,
    consumer: Option<lapin::Consumer>,
    tag: String,
}

/// How long a dropped stream waits for the broker to confirm its consumer's cancel.
const CANCEL_LIMIT: Duration = Duration::from_secs(2);

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(mut consumer) = self.consumer.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (inner, channel, queue) =
            (self.inner.clone(), self.channel.clone(), self.queue.clone());
        let tag = std::mem::take(&mut self.tag);
        // Cancel first (no more deliveries), then give back what was prefetched but never
        // yielded without counting it: nobody saw it (a nack would count on a quorum queue).
        let task = runtime.spawn(async move {
            if !channel.connected() {
                return;
            }
            // Bounded: a cancel the broker never confirms must not keep the give-back (and so
            // `shutdown`, which waits for it) waiting; the deliveries below still drain.
            let cancel = async {
                let _no_commit = channel.command_gate().await;
                channel
                    .channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await
            };
            if tokio::time::timeout(CANCEL_LIMIT, cancel).await.is_err() {
                tracing::warn!(queue = %queue, "the broker did not confirm a consumer cancel");
            }
            let mut unyielded = Vec::new();
            while let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
            {
                let decoded_count = codec::receive_count(&d.properties, d.redelivered);
                unyielded.push(Lease {
                    queue: queue.clone(),
                    channel: channel.clone(),
                    tag: d.delivery_tag,
                    deadline: Instant::now(),
                    payload: Bytes::from(d.data),
                    properties: d.properties,
                    receive_count: decoded_count,
                    seen: false,
                    expired: false,
                });
            }
            inner.release_leases(unyielded).await;
        });
        let mut tasks = self.inner.give_backs.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

/// Wall-clock time for the informational timestamps of deliveries (lease expiry, the enqueue
/// time of a message that carries none), read at most once a millisecond: `Utc::now()` per
/// message was a measurable part of the provider's work at stream rates. The lease itself
/// runs on the monotonic clock; the expiry shown is at most 1 ms early.
struct WallClock {
    utc: DateTime<Utc>,
    read_at: Instant,
    /// The visibility timeout as a chrono duration (None: too long to show an expiry).
    lease: Option<chrono::Duration>,
    /// `utc + lease`, computed when `utc` is read.
    expires: Option<DateTime<Utc>>,
}

impl WallClock {
    fn new(visibility_timeout: Duration) -> Self {
        let lease = chrono::Duration::from_std(visibility_timeout).ok();
        let utc = Utc::now();
        WallClock {
            utc,
            read_at: Instant::now(),
            lease,
            expires: lease.and_then(|d| utc.checked_add_signed(d)),
        }
    }

    /// The wall-clock time and the expiry a lease taken now shows.
    fn now(&mut self, mono: Instant) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
        if mono.saturating_duration_since(self.read_at) >= Duration::from_millis(1) {
            self.utc = Utc::now();
            self.read_at = mono;
            self.expires = self.lease.and_then(|d| self.utc.checked_add_signed(d));
        }
        (self.utc, self.expires)
    }
}

async fn subscribe(
    inner: Arc<Inner>,
    queue: QueueName,
    batch_size: usize,
    pause: Option<Duration>,
) -> Result<Subscription> {
    if let Some(pause) = pause {
        tokio::time::sleep(pause).await;
    }
    inner.release_expired(&queue).await;
    let link = inner.link().await?;
    let channel = link
        .conn
        .create_channel()
        .await
        .map_err(|e| inner.map("open channel", None, e))?;
    let prefetch = inner
        .prefetch
        .load(Ordering::Relaxed)
        .max(u16::try_from(batch_size).unwrap_or(u16::MAX));
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| inner.map("basic.qos", None, e))?;
    let (tag, consumer) = basic_consume(&channel, &queue)
        .await
        .map_err(|e| inner.map("basic.consume", Some(&queue), e))?;
    Ok(Subscription {
        inner: inner.clone(),
        queue,
        channel: LeaseChannel::new(channel),
        consumer: Some(consumer),
        tag,
    })
}

struct PushStream {
    inner: Arc<Inner>,
    queue: QueueName,
    options: ConsumerOptions,
    subscription: Option<Subscription>,
    /// Subscribing (after `pause`, when the last attempt failed): off the hot path, so boxed.
    subscribing: Option<BoxFuture<'static, Result<Subscription>>>,
    pause: Option<Duration>,
    next_pause: Duration,
    finished: bool,
    clock: WallClock,
}

impl PushStream {
    fn first_pause(options: &ConsumerOptions) -> Duration {
        options.min_idle_backoff.max(Duration::from_millis(50))
    }

    /// Makes a delivery a leased message.
    fn lease(&mut self, channel: Arc<LeaseChannel>, d: Delivery) -> ReceivedMessage {
        let mono = Instant::now();
        let (now, expires) = self.clock.now(mono);
        let payload = Bytes::from(d.data);
        let decoded = codec::decode(
            &self.queue,
            payload.clone(),
            &d.properties,
            d.routing_key.as_str(),
            d.redelivered,
            now,
        );
        let receipt = self.inner.leases.register(Lease {
            queue: self.queue.clone(),
            channel,
            tag: d.delivery_tag,
            deadline: mono + self.options.visibility_timeout,
            payload,
            properties: d.properties,
            receive_count: decoded.receive_count,
            seen: true,
            expired: false,
        });
        decoded.into_received(receipt, expires)
    }

    /// Drives the subscription attempt; `Some(error)` is yielded to the caller.
    fn poll_subscribe(&mut self, cx: &mut Context<'_>) -> Poll<Option<MessagingError>> {
        let subscribing = self.subscribing.get_or_insert_with(|| {
            subscribe(
                self.inner.clone(),
                self.queue.clone(),
                self.options.batch_size,
                self.pause.take(),
            )
            .boxed()
        });
        let outcome = ready!(subscribing.as_mut().poll(cx));
        self.subscribing = None;
        Poll::Ready(match outcome {
            Ok(s) => {
                self.subscription = Some(s);
                self.next_pause = Self::first_pause(&self.options);
                None
            }
            Err(e) => {
                // Retryable: say so, pause, try again. Permanent (queue gone): end.
                if e.is_retryable() {
                    self.pause = Some(self.next_pause);
                    self.next_pause = (self.next_pause * 2).min(Duration::from_secs(5));
                } else {
                    self.finished = true;
                }
                Some(e)
            }
        })
    }
}

impl Stream for PushStream {
    type Item = Result<ReceivedMessage>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            let Some(sub) = this.subscription.as_mut() else {
                if let Some(e) = ready!(this.poll_subscribe(cx)) {
                    return Poll::Ready(Some(Err(e)));
                }
                continue;
            };
            let Some(consumer) = sub.consumer.as_mut() else {
                this.subscription = None;
                continue;
            };
            match ready!(consumer.poll_next_unpin(cx)) {
                // Buffered before the channel died: its lease could not be settled, and the
                // broker has requeued it already.
                Some(Ok(_)) if !sub.channel.connected() => this.subscription = None,
                Some(Ok(d)) => {
                    let channel = sub.channel.clone();
                    return Poll::Ready(Some(Ok(this.lease(channel, d))));
                }
                Some(Err(e)) => {
                    // The channel or connection broke: subscribe again (reconnecting).
                    tracing::warn!(queue = %this.queue, error = %e, "push consumer lost; resubscribing");
                    this.subscription = None;
                }
                None => {
                    // Cancelled by the broker (queue deleted) or the channel closed: a new
                    // subscription tells which (QueueNotFound ends the stream).
                    this.subscription = None;
                }
            }
        }
    }
}

pub(super) fn push_stream(
    inner: Arc<Inner>,
    queue: QueueName,
    options: ConsumerOptions,
) -> MessageStream {
    Box::pin(PushStream {
        inner,
        queue,
        next_pause: PushStream::first_pause(&options),
        clock: WallClock::new(options.visibility_timeout),
        options,
        subscription: None,
        subscribing: None,
        pause: None,
        finished: false,
    })
}
