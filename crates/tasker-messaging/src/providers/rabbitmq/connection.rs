//! One AMQP connection with its channels, rebuilt on demand after it breaks.
//!
//! Publishing uses a small pool of confirm-mode channels; each queue received from gets its
//! own lease channel (a `basic.get` on a missing queue closes the channel it ran on, so one
//! queue's error never costs another queue's leases); administrative calls take a channel
//! from an idle pool and return it only if it is still open. When the connection is found
//! broken, the next caller reconnects (one at a time) and everything is created afresh; leases
//! held on the old channels are reported lost, and the broker has requeued their messages.
//!
//! The connector also remembers what the service declared (exchanges, queues, bindings) and
//! declares it again on every new connection before anyone uses it: after a broker restart,
//! transient exchanges and bindings are gone and a node that lost its data has no queues, so
//! the service would otherwise publish into nothing.
//!
//! Also here: `Inner::link` (the live connection, starting the lease reaper on first use) and
//! the service's health and shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use parking_lot::Mutex;

use super::channel::LeaseChannel;
use super::errors::ErrorMapper;
use super::leases::{self, Lease};
use super::version::{self, BrokerVersion};
use super::{Inner, RabbitMqMessageService};
use crate::error::{MessagingError, Result};
use crate::queue_name::QueueName;
use crate::secret::SecretUrl;
use crate::service::MessagingHealth;

/// A live connection and its channels.
pub(super) struct Link {
    pub conn: Connection,
    pub epoch: u64,
    /// The broker's version, read when this connection was made (see `version.rs`); `None`
    /// when the probe failed.
    pub broker: Option<BrokerVersion>,
    publishers: Vec<Mutex<Channel>>,
    next_publisher: AtomicUsize,
    idle_admin: Mutex<Vec<Channel>>,
    queue_channels: Mutex<HashMap<QueueName, Arc<LeaseChannel>>>,
}

impl Link {
    pub fn connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// A confirm-mode channel for publishing, round robin; a closed one is replaced.
    pub async fn publisher(&self, errors: &ErrorMapper) -> Result<Channel> {
        let i = self.next_publisher.fetch_add(1, Ordering::Relaxed) % self.publishers.len();
        let current = self.publishers[i].lock().clone();
        if current.status().connected() {
            return Ok(current);
        }
        let fresh = open_confirm_channel(&self.conn)
            .await
            .map_err(|e| errors.map("open publisher channel", None, e))?;
        *self.publishers[i].lock() = fresh.clone();
        Ok(fresh)
    }

    /// An idle administrative channel; give it back with [`Link::give_back`].
    pub async fn admin(&self, errors: &ErrorMapper) -> Result<Channel> {
        loop {
            let Some(ch) = self.idle_admin.lock().pop() else {
                break;
            };
            if ch.status().connected() {
                return Ok(ch);
            }
        }
        self.conn
            .create_channel()
            .await
            .map_err(|e| errors.map("open channel", None, e))
    }

    pub fn give_back(&self, channel: Channel) {
        if channel.status().connected() {
            let mut idle = self.idle_admin.lock();
            if idle.len() < 8 {
                idle.push(channel);
            }
        }
    }

    /// The lease channel receives on `queue` use. With `keep_transactional` false, a channel
    /// that switched to transaction mode (it moved a message; every ack then waits for a
    /// commit) is retired: it keeps its leases and closes when they end, and new receives
    /// get a fresh channel.
    pub async fn queue_channel(
        &self,
        queue: &QueueName,
        errors: &ErrorMapper,
        keep_transactional: bool,
    ) -> Result<Arc<LeaseChannel>> {
        let usable =
            |ch: &LeaseChannel| ch.connected() && (keep_transactional || !ch.is_transactional());
        if let Some(ch) = self.queue_channels.lock().get(queue) {
            if usable(ch) {
                return Ok(ch.clone());
            }
        }
        let channel = self
            .conn
            .create_channel()
            .await
            .map_err(|e| errors.map("open channel", None, e))?;
        let lc = LeaseChannel::new(channel);
        let mut map = self.queue_channels.lock();
        match map.get(queue) {
            // Another caller opened one meanwhile: use theirs, ours closes on drop.
            Some(existing) if usable(existing) => Ok(existing.clone()),
            _ => {
                map.insert(queue.clone(), lc.clone());
                Ok(lc)
            }
        }
    }
}

async fn open_confirm_channel(conn: &Connection) -> lapin::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Something the service declared, to declare again on a new connection.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Declaration {
    Exchange {
        name: String,
        kind: ExchangeKind,
        durable: bool,
    },
    /// A durable queue with its arguments.
    Queue { name: String, args: FieldTable },
    Binding {
        queue: String,
        exchange: String,
        key: String,
    },
}

impl Declaration {
    /// Declarations with the same identity replace each other.
    fn same_target(&self, other: &Declaration) -> bool {
        use Declaration::*;
        match (self, other) {
            (Exchange { name: a, .. }, Exchange { name: b, .. }) => a == b,
            (Queue { name: a, .. }, Queue { name: b, .. }) => a == b,
            (a @ Binding { .. }, b @ Binding { .. }) => a == b,
            _ => false,
        }
    }

    async fn apply(&self, ch: &Channel) -> lapin::Result<()> {
        match self {
            Declaration::Exchange {
                name,
                kind,
                durable,
            } => {
                ch.exchange_declare(
                    name.as_str().into(),
                    kind.clone(),
                    ExchangeDeclareOptions {
                        durable: *durable,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
            }
            Declaration::Queue { name, args } => ch
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args.clone(),
                )
                .await
                .map(|_| ()),
            Declaration::Binding {
                queue,
                exchange,
                key,
            } => {
                ch.queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
            }
        }
    }
}

/// Holds the current link and rebuilds it when it breaks.
pub(super) struct Connector {
    uri: AMQPUri,
    /// Holds the client key when one is configured: never printed (no `Debug`).
    tls: OwnedTLSConfig,
    pub errors: ErrorMapper,
    connect_timeout: Duration,
    publisher_channels: usize,
    connection_name: String,
    current: Mutex<Option<Arc<Link>>>,
    reconnect: tokio::sync::Mutex<()>,
    epoch: AtomicU64,
    closed: AtomicBool,
    /// What to declare again on a new connection, in declaration order.
    topology: Mutex<Vec<Declaration>>,
}

impl Connector {
    pub fn new(
        uri: AMQPUri,
        tls: OwnedTLSConfig,
        url: SecretUrl,
        connect_timeout: Duration,
        publisher_channels: usize,
        connection_name: String,
    ) -> Self {
        Connector {
            uri,
            tls,
            errors: ErrorMapper { url },
            connect_timeout,
            publisher_channels: publisher_channels.max(1),
            connection_name,
            current: Mutex::new(None),
            reconnect: tokio::sync::Mutex::new(()),
            epoch: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            topology: Mutex::new(Vec::new()),
        }
    }

    fn live(&self) -> Option<Arc<Link>> {
        self.current.lock().clone().filter(|l| l.connected())
    }

    /// The live link, reconnecting first if the connection broke.
    pub async fn link(&self) -> Result<Arc<Link>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(MessagingError::NotInitialized(
                "the RabbitMQ service was shut down".into(),
            ));
        }
        if let Some(link) = self.live() {
            return Ok(link);
        }
        let _one_at_a_time = self.reconnect.lock().await;
        if let Some(link) = self.live() {
            return Ok(link);
        }
        let link = Arc::new(self.connect().await?);
        if link.epoch > 1 {
            let redeclared = self.redeclare(&link).await;
            tracing::info!(epoch = link.epoch, redeclared, "reconnected to RabbitMQ");
        }
        *self.current.lock() = Some(link.clone());
        Ok(link)
    }

    /// Remembers a declaration that succeeded (a later one of the same target replaces it).
    pub fn record(&self, declaration: Declaration) {
        let mut topology = self.topology.lock();
        match topology.iter_mut().find(|d| d.same_target(&declaration)) {
            Some(existing) => *existing = declaration,
            None => topology.push(declaration),
        }
    }

    /// The queues this service declared (and has not deleted).
    pub fn declared_queues(&self) -> Vec<String> {
        self.topology
            .lock()
            .iter()
            .filter_map(|d| match d {
                Declaration::Queue { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Forgets the declarations of deleted queues (and their bindings).
    pub fn forget_queues(&self, names: &[&str]) {
        self.topology.lock().retain(|d| match d {
            Declaration::Queue { name, .. } => !names.contains(&name.as_str()),
            Declaration::Binding { queue, .. } => !names.contains(&queue.as_str()),
            Declaration::Exchange { .. } => true,
        });
    }

    /// Declares everything recorded again on a fresh connection, in order; returns how many
    /// declarations succeeded. One that fails (it closes its channel) is logged and skipped.
    async fn redeclare(&self, link: &Link) -> usize {
        let declarations = self.topology.lock().clone();
        let mut channel: Option<Channel> = None;
        let mut done = 0;
        for d in &declarations {
            let ch = match channel.take().filter(|c| c.status().connected()) {
                Some(ch) => ch,
                None => match link.conn.create_channel().await {
                    Ok(ch) => ch,
                    Err(e) => {
                        tracing::warn!(error = %self.errors.map("open channel", None, e), "re-declaring after reconnect stopped");
                        return done;
                    }
                },
            };
            match d.apply(&ch).await {
                Ok(()) => done += 1,
                Err(e) => {
                    tracing::warn!(declaration = ?d, error = %self.errors.map("re-declare", None, e), "re-declaring after reconnect failed")
                }
            }
            channel = Some(ch);
        }
        if let Some(ch) = channel {
            link.give_back(ch);
        }
        done
    }

    async fn connect(&self) -> Result<Link> {
        let attempt = async {
            let conn = Connection::connect_uri_with_config(
                self.uri.clone(),
                ConnectionProperties::default()
                    .with_connection_name(self.connection_name.as_str().into()),
                self.tls.clone(),
                lapin::runtime::default_runtime()?,
            )
            .await?;
            let mut publishers = Vec::with_capacity(self.publisher_channels);
            for _ in 0..self.publisher_channels {
                publishers.push(Mutex::new(open_confirm_channel(&conn).await?));
            }
            Ok::<_, lapin::Error>((conn, publishers))
        };
        // The version comes from a probe beside the connection (lapin keeps the server
        // properties to itself); read again on every connection, as a broker can be upgraded
        // while the service is disconnected.
        // A first connection of this process to this broker asks once (many services start
        // at once in one process); a reconnect always asks again.
        let first = self.epoch.load(Ordering::Relaxed) == 0;
        let known = if first {
            version::known(&self.uri)
        } else {
            None
        };
        let probe = async {
            match known {
                Some(v) => Some(version::ServerProperties {
                    product: None,
                    version: Some(v),
                }),
                None => version::probe(&self.uri, &self.tls, self.connect_timeout).await,
            }
        };
        let (connected, server) =
            tokio::join!(tokio::time::timeout(self.connect_timeout, attempt), probe);
        let broker = server.as_ref().and_then(|s| s.version);
        match &server {
            Some(s) => {
                tracing::debug!(product = ?s.product, version = ?s.version, "RabbitMQ broker")
            }
            None => tracing::warn!(
                "could not read the broker's version; queues are declared as for RabbitMQ 3.x \
                 (on 4.x a quorum queue without max_receive_count keeps the broker's default \
                 delivery limit of 20)"
            ),
        }
        let (conn, publishers) = match connected {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => return Err(self.errors.map("connect", None, e)),
            Err(_) => {
                return Err(MessagingError::Timeout {
                    operation: "rabbitmq connect",
                    after: self.connect_timeout,
                })
            }
        };
        Ok(Link {
            conn,
            epoch: self.epoch.fetch_add(1, Ordering::Relaxed) + 1,
            broker,
            publishers,
            next_publisher: AtomicUsize::new(0),
            idle_admin: Mutex::new(Vec::new()),
            queue_channels: Mutex::new(HashMap::new()),
        })
    }

    /// Closes the connection; later calls fail with `NotInitialized`.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let link = self.current.lock().take();
        if let Some(link) = link {
            // Bounded: a connection the broker no longer answers (a protocol error, a broker
            // gone away) must not hang the caller; dropping it closes the socket.
            let closing = link.conn.close(200, "shutdown".into());
            if tokio::time::timeout(CLOSE_LIMIT, closing).await.is_err() {
                tracing::warn!("the broker did not confirm the connection close; dropping it");
            }
        }
    }
}

impl Inner {
    /// The live connection; starts the lease reaper on first use.
    pub(super) async fn link(&self) -> Result<Arc<Link>> {
        self.start_reaper();
        self.connector.link().await
    }

    /// A plain function, so the reaper's future (which publishes, which needs a link) does
    /// not contain itself.
    fn start_reaper(&self) {
        {
            let mut reaper = self.reaper.lock();
            if reaper.is_none() {
                let me = self.me.clone();
                let release = move |due: Vec<Lease>| {
                    let me = me.clone();
                    async move {
                        match me.upgrade() {
                            Some(inner) => inner.release_leases(due).await,
                            // The service is gone: requeue without counting (classic queues).
                            None => leases::nack_all(due).await,
                        }
                    }
                };
                *reaper = Some(tokio::spawn(self.leases.clone().run_reaper(release)));
            }
        }
    }
}

/// How long closing the connection may wait for the broker's close-ok.
const CLOSE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long `shutdown` waits for unseen messages to be given back.
const GIVE_BACK_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

impl RabbitMqMessageService {
    pub(super) async fn health(&self) -> Result<MessagingHealth> {
        match self.inner.link().await {
            Ok(link) => Ok(MessagingHealth::Healthy {
                queue_depth: self.declared_depth(&link).await,
                in_flight: self.inner.leases.live_count(),
            }),
            Err(e) => Ok(MessagingHealth::Unhealthy {
                error: e.to_string(),
            }),
        }
    }

    /// Ready messages in the queues this service declared (the broker's count; one passive
    /// declare each). Queues it only uses, never declared, are not known to it.
    async fn declared_depth(&self, link: &Link) -> u64 {
        let mut depth = 0u64;
        for name in self.inner.connector.declared_queues() {
            let Ok(queue) = QueueName::new(&name) else {
                continue;
            };
            if let Ok(n) = self.inner.ready_count(link, &queue).await {
                depth += u64::from(n);
            }
        }
        depth
    }

    pub(super) async fn stop(&self) -> Result<()> {
        // What nobody saw goes back uncounted before the connection closes (closing would
        // requeue it, and a quorum queue would count it).
        let give_backs = std::mem::take(&mut *self.inner.give_backs.lock());
        let kept = self.inner.leases.take_unseen();
        let settle = async {
            futures::future::join_all(give_backs).await;
            self.inner.release_leases(kept).await;
        };
        if tokio::time::timeout(GIVE_BACK_LIMIT, settle).await.is_err() {
            tracing::warn!("giving back unseen messages took too long; closing anyway");
        }
        self.inner.connector.close().await;
        if let Some(reaper) = self.inner.reaper.lock().take() {
            reaper.abort();
        }
        Ok(())
    }
}
