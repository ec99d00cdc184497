//! `wait_for_messages` on AMQP. The broker tells nobody that a message arrived except a
//! consumer it delivers to, so one task per queue subscribes with prefetch 1 for the wait and
//! takes the first message that arrives: it is leased to this service at once (so it cannot
//! be lost or delivered twice) and kept for the next `receive` on the queue, which hands kept
//! messages out first, with its own visibility timeout. The other tasks waiting on the queue
//! sleep; the watch passes to one of them whenever the watching task returns.
//!
//! A kept message runs under the default visibility timeout
//! (`queues.default_visibility_timeout_secs`) until a `receive` claims it and sets its own; one
//! that no `receive` claims comes back when that runs out, like any lease (on a quorum queue
//! that counts as a delivery). Waiting costs a `basic.consume` and a `basic.cancel` per wait
//! that finds the queue empty, never a poll; when subscribing fails (the queue is missing, the
//! connection is down) the wait sleeps out its time instead, so callers in a loop never spin.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicQosOptions};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::channel::LeaseChannel;
use super::receive::WINDOW_IDLE;
use super::{stream, Inner};
use crate::error::Result;
use crate::message::ReceivedMessage;
use crate::queue_name::QueueName;

/// The waiting state of every queue this service waited on.
#[derive(Default)]
pub(super) struct Waiters {
    queues: Mutex<HashMap<QueueName, Arc<QueueWaiter>>>,
}

#[derive(Default)]
pub(super) struct QueueWaiter {
    /// Messages a wait took, leased to this service, oldest first.
    kept: Mutex<VecDeque<ReceivedMessage>>,
    /// Held by the one task that subscribes for the queue's waiters.
    watching: Arc<tokio::sync::Mutex<()>>,
    arrived: Notify,
    /// The channel waits subscribe on (prefetch 1); replaced when it closed.
    channel: Mutex<Option<Arc<LeaseChannel>>>,
}

impl Waiters {
    fn of(&self, queue: &QueueName) -> Arc<QueueWaiter> {
        self.queues.lock().entry(queue.clone()).or_default().clone()
    }

    /// Takes up to `max` kept messages of `queue`, oldest first.
    pub fn take_kept(&self, queue: &QueueName, max: usize) -> Vec<ReceivedMessage> {
        let Some(waiter) = self.queues.lock().get(queue).cloned() else {
            return Vec::new();
        };
        let mut kept = waiter.kept.lock();
        let n = kept.len().min(max);
        kept.drain(..n).collect()
    }

    /// Forgets a deleted queue; its kept messages' leases end with the queue's channel.
    pub fn forget(&self, queue: &QueueName) {
        self.queues.lock().remove(queue);
    }
}

impl Inner {
    /// Returns when a message of `queue` is kept for this service, or after `max_wait`.
    ///
    /// One waiting task subscribes; the others sleep. When it stops (a message arrived and it
    /// returns to receive it, or its time ran out) it hands the watch to one other waiter, so
    /// the queue stays watched while anyone waits, and one arrival wakes one waiter, not every
    /// waiter into an empty receive.
    pub(super) async fn wait_for_messages(&self, queue: &QueueName, max_wait: Duration) {
        self.release_expired(queue).await;
        let deadline = Instant::now() + max_wait;
        let waiter = self.waiters.of(queue);
        let mut first = true;
        loop {
            let handed_over = waiter.arrived.notified();
            tokio::pin!(handed_over);
            // Registered before looking, so a hand-over between the look and the await is
            // not missed.
            handed_over.as_mut().enable();
            // A message kept already is for this caller's receive; after a hand-over, what is
            // kept belongs to the watcher that handed over, and this task watches on.
            if (first && !waiter.kept.lock().is_empty()) || Instant::now() >= deadline {
                return;
            }
            first = false;
            let Ok(watching) = waiter.watching.clone().try_lock_owned() else {
                if tokio::time::timeout_at(deadline, handed_over)
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            };
            let Some(inner) = self.me.upgrade() else {
                return;
            };
            // The watch runs as its own task, so a caller that stops waiting (a timeout or a
            // select around this call) never leaves a subscription that holds a message: the
            // watch still ends at its deadline, keeps what arrived and hands over.
            let watch = tokio::spawn({
                let (waiter, queue) = (waiter.clone(), queue.clone());
                async move {
                    let watched = inner.watch(&queue, &waiter, deadline).await;
                    drop(watching);
                    waiter.arrived.notify_one();
                    watched
                }
            });
            if let Ok(Err(e)) = watch.await {
                tracing::debug!(queue = %queue, error = %e, "waiting by subscription failed; sleeping");
                tokio::time::sleep_until(deadline).await;
            }
            return;
        }
    }

    /// Subscribes with prefetch 1 until a message arrives or `deadline`; keeps what arrived.
    async fn watch(
        &self,
        queue: &QueueName,
        waiter: &QueueWaiter,
        deadline: Instant,
    ) -> Result<()> {
        let channel = self.wait_channel(waiter).await?;
        // The gate only around each command: a kept message moved meanwhile must not wait
        // for the whole watch.
        let subscribed = {
            let _no_commit = channel.command_gate().await;
            stream::basic_consume(&channel.channel, queue).await
        };
        let (tag, mut consumer) =
            subscribed.map_err(|e| self.map("basic.consume", Some(queue), e))?;
        let mut arrived = Vec::new();
        if let Ok(Some(Ok(d))) = tokio::time::timeout_at(deadline, consumer.next()).await {
            arrived.push(d);
        }
        let cancelled = {
            let _no_commit = channel.command_gate().await;
            channel
                .channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await
        };
        if cancelled.is_ok() {
            // Delivered before the cancel took effect (prefetch 1 bounds it).
            while let Ok(Some(Ok(d))) = tokio::time::timeout(WINDOW_IDLE, consumer.next()).await {
                arrived.push(d);
            }
        }
        if arrived.is_empty() {
            return Ok(());
        }
        let hold_until = Instant::now() + self.settings.default_visibility_timeout;
        let now = chrono::Utc::now();
        // The expiry shown is set when a receive claims the message.
        let leased: Vec<_> = arrived
            .into_iter()
            .map(|d| self.lease_delivery(queue, &channel, d, hold_until, now, None, false))
            .collect();
        waiter.kept.lock().extend(leased);
        Ok(())
    }

    async fn wait_channel(&self, waiter: &QueueWaiter) -> Result<Arc<LeaseChannel>> {
        if let Some(ch) = waiter.channel.lock().as_ref() {
            if ch.connected() {
                return Ok(ch.clone());
            }
        }
        let link = self.link().await?;
        let channel = link
            .conn
            .create_channel()
            .await
            .map_err(|e| self.map("open channel", None, e))?;
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .map_err(|e| self.map("basic.qos", None, e))?;
        let lc = LeaseChannel::new(channel);
        *waiter.channel.lock() = Some(lc.clone());
        Ok(lc)
    }
}
