//! Receiving: one `basic.get` (which also says how many are ready), then the rest of the batch
//! through a short-lived consumer window or pipelined gets, each delivery leased on the
//! queue's lease channel. Messages a wait kept (see `wait.rs`) are handed out first.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicGetOptions, BasicQosOptions};
use tokio::time::Instant;

use super::channel::LeaseChannel;
use super::leases::Lease;
use super::{codec, stream, Inner};
use crate::error::Result;
use crate::message::ReceivedMessage;
use crate::queue_name::QueueName;

/// From this many more ready messages on, `receive` takes them through a consumer window
/// instead of more `basic.get`s.
const CONSUME_WINDOW_FROM: usize = 4;
/// How long a consumer window waits for its next delivery before it stops.
pub(super) const WINDOW_IDLE: Duration = Duration::from_millis(20);

impl Inner {
    /// Takes up to `n` more messages through a consumer with prefetch `n` on the lease
    /// channel, cancelled as soon as it delivered `n` or went quiet. Deliveries that arrive
    /// before the cancel is confirmed are kept too (the prefetch bounds them by `n`).
    async fn consume_window(
        &self,
        lc: &LeaseChannel,
        queue: &QueueName,
        n: usize,
        out: &mut Vec<lapin::message::Delivery>,
    ) {
        let prefetch = u16::try_from(n).unwrap_or(u16::MAX);
        if lc.prefetch.swap(prefetch, Ordering::Relaxed) != prefetch {
            if let Err(e) = lc
                .channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
            {
                tracing::debug!(error = %e, "basic.qos failed");
                return;
            }
        }
        let (tag, mut consumer) = match stream::basic_consume(&lc.channel, queue).await {
            Ok(subscribed) => subscribed,
            Err(e) => {
                tracing::debug!(error = %e, "basic.consume for a batch failed");
                return;
            }
        };
        let mut got = 0;
        while got < n {
            // What lapin has buffered is taken without arming a timer per delivery.
            let next = match consumer.next().now_or_never() {
                Some(ready) => ready,
                None => match tokio::time::timeout(WINDOW_IDLE, consumer.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match next {
                Some(Ok(d)) => {
                    out.push(d);
                    got += 1;
                }
                _ => break,
            }
        }
        if let Err(e) = lc
            .channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            tracing::debug!(error = %e, "basic.cancel failed");
            return;
        }
        // After cancel-ok the stream yields what was already delivered, then ends.
        while let Ok(Some(Ok(d))) = tokio::time::timeout(WINDOW_IDLE, consumer.next()).await {
            out.push(d);
        }
    }

    /// Hands out what a wait kept first, then `basic.get`s the rest on the queue's lease
    /// channel and leases them.
    pub(super) async fn receive_many(
        &self,
        queue: &QueueName,
        max: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        self.release_expired(queue).await;
        let deadline = Instant::now() + visibility_timeout;
        let now = Utc::now();
        let expires = chrono::Duration::from_std(visibility_timeout)
            .ok()
            .and_then(|d| now.checked_add_signed(d));
        let mut out = Vec::new();
        for mut kept in self.waiters.take_kept(queue, max) {
            // A kept lease that ran out (or whose channel closed) was released: skip it.
            if self
                .leases
                .claim(queue, &kept.metadata.receipt_handle, deadline)
                .is_ok()
            {
                kept.metadata.visibility_timeout_expires = expires;
                out.push(kept);
            }
        }
        if out.len() == max {
            return Ok(out);
        }
        let link = self.link().await?;
        // Classic queues move a message on every release: their channel stays transactional.
        let classic = self.settings.queue_type == crate::config::RabbitMqQueueType::Classic;
        let lc = link.queue_channel(queue, self.errors(), classic).await?;
        let _in_order = lc.receive.lock().await;
        let _no_commit = lc.command_gate().await;
        let get = || {
            lc.channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        };
        let first = match get().await {
            Ok(Some(first)) => first,
            Ok(None) => return Ok(out),
            // What is in hand is leased already: hand it out; the error shows next time.
            Err(_) if !out.is_empty() => return Ok(out),
            Err(e) => return Err(self.map("basic.get", Some(queue), e)),
        };
        let more = (max - out.len() - 1).min(first.message_count as usize);
        let mut deliveries = vec![first.delivery];
        if more >= CONSUME_WINDOW_FROM {
            // A quorum queue commits every basic.get through Raft, one after another, so a
            // batch comes faster from a short-lived consumer whose prefetch is the batch.
            self.consume_window(&lc, queue, more, &mut deliveries).await;
        } else if more > 0 {
            // Pipelined: the gets go out back to back and their replies come in order.
            for r in futures::future::join_all((0..more).map(|_| get())).await {
                match r {
                    Ok(Some(m)) => deliveries.push(m.delivery),
                    Ok(None) => {}
                    // What was got is held on the channel; a broken channel requeues it.
                    Err(e) => tracing::debug!(error = %e, "pipelined basic.get failed"),
                }
            }
        }
        out.extend(
            deliveries
                .into_iter()
                .map(|d| self.lease_delivery(queue, &lc, d, deadline, now, expires, true)),
        );
        Ok(out)
    }

    /// Registers a lease for a delivery on `channel`; returns the received message.
    // Called per message on the receive path: plain arguments, no struct to build.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lease_delivery(
        &self,
        queue: &QueueName,
        channel: &Arc<LeaseChannel>,
        d: lapin::message::Delivery,
        deadline: Instant,
        now: chrono::DateTime<Utc>,
        expires: Option<chrono::DateTime<Utc>>,
        seen: bool,
    ) -> ReceivedMessage {
        let payload = Bytes::from(d.data);
        let decoded = codec::decode(
            queue,
            payload.clone(),
            &d.properties,
            d.routing_key.as_str(),
            d.redelivered,
            now,
        );
        let receipt = self.leases.register(Lease {
            queue: queue.clone(),
            channel: channel.clone(),
            tag: d.delivery_tag,
            deadline,
            payload,
            properties: d.properties,
            receive_count: decoded.receive_count,
            seen,
            expired: false,
        });
        decoded.into_received(receipt, expires)
    }
}
