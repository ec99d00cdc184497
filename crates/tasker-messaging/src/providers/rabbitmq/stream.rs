//! The native push consumer: `basic.consume` with prefetch, every delivery a lease like a
//! received message (same receipts, same visibility timeout, same reaper).
//!
//! When the connection or channel breaks, the stream reconnects and subscribes again by
//! itself; what it held unacked is requeued by the broker and delivered again. A missing queue
//! ends the stream with `QueueNotFound`. Dropping the stream cancels the consumer and hands
//! back what was prefetched but never yielded; nothing keeps running.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::time::Instant;

use super::leases::{Lease, LeaseChannel};
use super::{codec, Inner};
use crate::error::Result;
use crate::queue_name::QueueName;
use crate::service::{ConsumerOptions, MessageStream};

struct Subscription {
    channel: Arc<LeaseChannel>,
    consumer: Option<lapin::Consumer>,
    tag: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(mut consumer) = self.consumer.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let channel = self.channel.clone();
        let tag = std::mem::take(&mut self.tag);
        // Cancel, then requeue what was prefetched but never yielded (it would otherwise
        // stay unacked until the channel closes).
        runtime.spawn(async move {
            if !channel.connected() {
                return;
            }
            let _ = channel
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
            let mut unyielded = Vec::new();
            while let Ok(Some(Ok(d))) =
                tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
            {
                unyielded.push(d.delivery_tag);
            }
            let _ = channel.release(unyielded).await;
        });
    }
}

/// Wall-clock time for the informational timestamps of deliveries (lease expiry, the enqueue
/// time of a message that carries none), read at most once a millisecond: `Utc::now()` per
/// message was a measurable part of the provider's work at stream rates. The lease itself
/// runs on the monotonic clock; the expiry shown is at most 1 ms early.
struct WallClock {
    utc: DateTime<Utc>,
    read_at: Instant,
}

impl WallClock {
    fn new() -> Self {
        WallClock {
            utc: Utc::now(),
            read_at: Instant::now(),
        }
    }

    fn now(&mut self, mono: Instant) -> DateTime<Utc> {
        if mono.saturating_duration_since(self.read_at) >= Duration::from_millis(1) {
            self.utc = Utc::now();
            self.read_at = mono;
        }
        self.utc
    }
}

struct State {
    inner: Arc<Inner>,
    queue: QueueName,
    options: ConsumerOptions,
    subscription: Option<Subscription>,
    pause: Option<Duration>,
    next_pause: Duration,
    finished: bool,
    clock: WallClock,
    /// The visibility timeout as a chrono duration (None: too long to show an expiry).
    shown_lease: Option<chrono::Duration>,
}

async fn subscribe(st: &State) -> Result<Subscription> {
    let inner = &st.inner;
    let link = inner.link().await?;
    let channel = link
        .conn
        .create_channel()
        .await
        .map_err(|e| inner.map("open channel", None, e))?;
    let prefetch = inner
        .prefetch
        .load(Ordering::Relaxed)
        .max(u16::try_from(st.options.batch_size).unwrap_or(u16::MAX));
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| inner.map("basic.qos", None, e))?;
    let tag = format!("tasker-{}", uuid::Uuid::new_v4().simple());
    let consumer = channel
        .basic_consume(
            st.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| inner.map("basic.consume", Some(&st.queue), e))?;
    Ok(Subscription {
        channel: LeaseChannel::new(channel),
        consumer: Some(consumer),
        tag,
    })
}

pub(super) fn push_stream(
    inner: Arc<Inner>,
    queue: QueueName,
    options: ConsumerOptions,
) -> MessageStream {
    let state = State {
        inner,
        queue,
        next_pause: options.min_idle_backoff.max(Duration::from_millis(50)),
        shown_lease: chrono::Duration::from_std(options.visibility_timeout).ok(),
        clock: WallClock::new(),
        options,
        subscription: None,
        pause: None,
        finished: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.finished {
                return None;
            }
            if let Some(pause) = st.pause.take() {
                tokio::time::sleep(pause).await;
            }
            if st.subscription.is_none() {
                match subscribe(&st).await {
                    Ok(s) => {
                        st.subscription = Some(s);
                        st.next_pause = st.options.min_idle_backoff.max(Duration::from_millis(50));
                    }
                    Err(e) => {
                        // Retryable: say so, pause, try again. Permanent (queue gone): end.
                        if e.is_retryable() {
                            st.pause = Some(st.next_pause);
                            st.next_pause = (st.next_pause * 2).min(Duration::from_secs(5));
                        } else {
                            st.finished = true;
                        }
                        return Some((Err(e), st));
                    }
                }
            }
            let Some(sub) = st.subscription.as_mut() else {
                continue;
            };
            let Some(consumer) = sub.consumer.as_mut() else {
                st.subscription = None;
                continue;
            };
            match consumer.next().await {
                // Buffered before the channel died: its lease could not be settled, and the
                // broker has requeued it already.
                Some(Ok(_)) if !sub.channel.connected() => st.subscription = None,
                Some(Ok(d)) => {
                    let mono = Instant::now();
                    let now = st.clock.now(mono);
                    let payload = Bytes::from(d.data);
                    let decoded = codec::decode(
                        &st.queue,
                        payload.clone(),
                        &d.properties,
                        d.routing_key.as_str(),
                        d.redelivered,
                        now,
                    );
                    let receipt = st.inner.leases.register(Lease {
                        queue: st.queue.clone(),
                        channel: sub.channel.clone(),
                        tag: d.delivery_tag,
                        deadline: mono + st.options.visibility_timeout,
                        payload,
                        properties: d.properties,
                        receive_count: decoded.receive_count,
                    });
                    let expires = st.shown_lease.map(|d| now + d);
                    return Some((Ok(decoded.into_received(receipt, expires)), st));
                }
                Some(Err(e)) => {
                    // The channel or connection broke: subscribe again (reconnecting).
                    tracing::warn!(queue = %st.queue, error = %e, "push consumer lost; resubscribing");
                    st.subscription = None;
                }
                None => {
                    // Cancelled by the broker (queue deleted) or the channel closed: a new
                    // subscription tells which (QueueNotFound ends the stream).
                    st.subscription = None;
                }
            }
        }
    })
    .boxed()
}
