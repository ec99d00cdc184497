//! Wakeups without polling: every script that makes a message receivable publishes on the
//! queue's channel `<base>wake`; one RESP3 connection per service subscribes (on the first
//! wait for that queue, resubscribing by itself after a reconnect) and wakes that queue's
//! waiters through a `Notify`. On a cluster the channel is a plain `PUBLISH`, which reaches
//! every node, so the subscriber talks to the URL's first node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{Mutex, Notify, OnceCell};

use super::errors::map_redis;
use crate::error::Result;
use crate::secret::SecretUrl;

type Waiters = Arc<RwLock<HashMap<Vec<u8>, Arc<Notify>>>>;

/// The subscriber and the waiters of each channel.
pub(super) struct Wakeups {
    node: SecretUrl,
    url: SecretUrl,
    waiters: Waiters,
    /// Counts the subscriber's disconnects: a waiter woken while it changed was woken by a
    /// disconnect, not by a message, and looks at its queue again instead of returning.
    disconnects: Arc<AtomicU64>,
    subscriber: OnceCell<ConnectionManager>,
    subscribed: Mutex<std::collections::HashSet<String>>,
}

impl Wakeups {
    pub(super) fn new(node: SecretUrl, url: SecretUrl) -> Self {
        Wakeups {
            node,
            url,
            waiters: Arc::default(),
            disconnects: Arc::default(),
            subscriber: OnceCell::new(),
            subscribed: Mutex::default(),
        }
    }

    /// The `Notify` of `channel`, subscribed to: waiters register on it (`notified()` then
    /// `enable()`) before they look at the queue, so a publish between the look and the wait
    /// still wakes them.
    pub(super) async fn notify_for(&self, channel: &str) -> Result<Arc<Notify>> {
        let notify = {
            let read = self.waiters.read();
            read.get(channel.as_bytes()).cloned()
        };
        let notify = match notify {
            Some(n) => n,
            None => self
                .waiters
                .write()
                .entry(channel.as_bytes().to_vec())
                .or_default()
                .clone(),
        };
        let mut subscribed = self.subscribed.lock().await;
        if !subscribed.contains(channel) {
            let mut sub = self.subscriber().await?.clone();
            sub.subscribe(channel)
                .await
                .map_err(|e| map_redis(e, "subscribe", None, None, &self.url))?;
            subscribed.insert(channel.to_owned());
        }
        Ok(notify)
    }

    /// How many times the subscriber has lost its connection so far.
    #[inline]
    pub(super) fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Acquire)
    }

    async fn subscriber(&self) -> Result<&ConnectionManager> {
        self.subscriber
            .get_or_try_init(|| async {
                let map = |e| map_redis(e, "subscribe", None, None, &self.url);
                let info = self.node.expose().into_connection_info().map_err(map)?;
                let redis = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(redis)).map_err(map)?;
                let waiters = self.waiters.clone();
                let disconnects = self.disconnects.clone();
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
                    .set_response_timeout(Some(std::time::Duration::from_secs(10)))
                    .set_automatic_resubscription()
                    .set_push_sender(move |push: PushInfo| deliver(&waiters, &disconnects, push));
                client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(map)
            })
            .await
    }
}

/// Wakes the waiters of the channel a message arrived on; a disconnect wakes every waiter
/// (they look at their queue again: a spurious return is allowed, a lost one is not).
fn deliver(
    waiters: &Waiters,
    disconnects: &AtomicU64,
    push: PushInfo,
) -> std::result::Result<(), std::convert::Infallible> {
    match push.kind {
        PushKind::Message => {
            if let Some(Value::BulkString(channel)) = push.data.first() {
                if let Some(n) = waiters.read().get(channel.as_slice()) {
                    n.notify_waiters();
                }
            }
        }
        PushKind::Disconnection => {
            disconnects.fetch_add(1, Ordering::AcqRel);
            tracing::debug!("redis wakeup subscriber disconnected; waiters look again");
            for n in waiters.read().values() {
                n.notify_waiters();
            }
        }
        _ => {}
    }
    Ok(())
}
