//! The RabbitMQ provider (lapin, AMQP 0-9-1).
//!
//! AMQP has no visibility timeout, no receive count on classic queues and no delayed delivery
//! without a plugin, so the provider builds each part of the contract from plain AMQP:
//!
//! * **Leases**: a received message stays unacked on the channel that got it, so no other
//!   receiver gets it; when its visibility timeout ends, a reaper task nacks it with requeue
//!   and it comes back (see `leases.rs`). `change_message_visibility(0)` nacks at once; `d > 0`
//!   moves the end of the lease. A lease also ends when its connection breaks (the broker
//!   requeues), which is still at least once.
//! * **Receive count**: quorum queues (the default) count deliveries (`x-delivery-count`);
//!   on classic queues a released message is published again with its count in a header
//!   (then the delivery is acked), so the count is real there too.
//! * **Dead letters**: quorum queues are declared with `x-delivery-limit = max - 1` and a
//!   dead-letter exchange, so the broker itself moves a message to `<queue>_dlq` when it
//!   comes back the `max`-th time, intact; the dead-letter routing key `<queue>.<max>` records
//!   the limit. On classic queues the provider does the same when it releases the message.
//!   An explicit `dead_letter_message` publishes a copy with the reason (confirmed) and then
//!   acks the original.
//! * **Delays**: a delayed send goes to a delay queue whose queue-wide TTL is the delay
//!   (rounded up to a bucket), which dead-letters back into the queue when it expires. One
//!   TTL per delay queue means no head-of-line blocking; unused delay queues expire.
//! * **Publishing**: persistent, `mandatory` (a missing queue is `QueueNotFound`), with
//!   publisher confirms; a batch is published in full before its confirms are awaited.
//! * **Receiving**: one `basic.get` (which also says how many are ready), then the rest of
//!   the batch through a short-lived consumer whose prefetch is the batch (a quorum queue
//!   commits each `basic.get` through Raft, one after another). Acks of a batch are one
//!   `multiple` ack where the tags allow it; acks never wait for the broker.
//! * **Push consumer**: `basic.consume` with prefetch (see `stream.rs`); it reconnects and
//!   resubscribes after the connection breaks.
//! * **Waiting**: `wait_for_messages` subscribes with prefetch 1 and keeps the first message
//!   that arrives, leased, for this service's next `receive` (see `wait.rs`): idle workers
//!   wake on a send from any connection instead of sleeping out their idle wait.
//! * **Recovery**: a broken connection (broker restart, `close_all_connections`) is rebuilt by
//!   the next call, which first declares again every exchange, queue and binding this service
//!   declared (see `connection.rs`), so transient topology comes back and a broker that lost
//!   its data gets the queues again before anything is published.
//! * **TLS**: an `amqps://` URL connects through rustls, trusting the system's certificate
//!   authorities plus an optional private CA, with an optional client certificate
//!   ([`RabbitMqTls`]); the files are read and checked when the service is built.
//!
//! What AMQP cannot give, and what the provider does instead:
//!
//! * A lease lives on the connection that received the message: receipts are
//!   `(service nonce, lease id)` and only that service can settle them (not another process).
//!   A dropped service keeps its leases for their full visibility timeout; a closed
//!   connection ends them early (the broker requeues: still at least once).
//! * A receipt whose lease ended is refused (`InvalidReceipt`) even before the message is
//!   received again: AMQP cannot delete a message that was handed back to the queue.
//! * Stats: the visible count is the broker's; `in_flight_count` is the leases this service
//!   holds (AMQP does not report unacked counts); delayed count and oldest age are unknown
//!   (`detailed_stats` is false). `purge_queue` removes ready messages and those waiting in
//!   the delay queues this service declared, not messages under lease.
//! * RabbitMQ closes a channel whose delivery stays unacked past `consumer_timeout` (30
//!   minutes by default), so longer leases need that raised (a warning is logged).
//! * Messages a push stream prefetched but never yielded are handed back when it is dropped;
//!   on a quorum queue that counts as a delivery.

mod codec;
mod connection;
mod leases;
mod stream;
mod wait;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation, ErrorKind};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::codec::{long_string, H_DL_AT, H_DL_COUNT, H_DL_REASON, H_DL_SOURCE};
use self::connection::{Connector, Declaration, Link};
use self::leases::{Ended, Lease, Leases, ReceiptProblem};
use crate::config::{MessagingConfig, RabbitMqQueueType};
use crate::error::{MessagingError, Result};
use crate::message::{
    DeadLetterReason, MessageId, OutgoingMessage, ReceiptHandle, ReceivedMessage,
};
use crate::queue_name::QueueName;
use crate::resources::ResourceRequirements;
use crate::secret::{scrub, SecretUrl};
use crate::service::{
    AmqpExtensions, Capabilities, ConsumerOptions, DeleteOutcome, ExchangeKind, MessageStream,
    MessagingHealth, MessagingService, ProviderKind, QueueOptions, QueueStats,
};

/// The exchange quorum queues dead-letter through; the DLQ is bound with `<queue>.<max>`.
const DEAD_LETTER_EXCHANGE: &str = "tasker.dead_letter";
/// Largest batch one `receive` or redrive step takes.
const MAX_BATCH: usize = 1000;
/// From this many more ready messages on, `receive` takes them through a consumer window
/// instead of more `basic.get`s.
const CONSUME_WINDOW_FROM: usize = 4;
/// How long a consumer window waits for its next delivery before it stops.
const WINDOW_IDLE: Duration = Duration::from_millis(20);

/// Settings of the RabbitMQ provider, from `[connection.rabbitmq]` and `[queues]`.
#[derive(Clone, Debug)]
pub struct RabbitMqSettings {
    pub url: SecretUrl,
    /// Overrides the URL's vhost.
    pub vhost: Option<String>,
    pub connection_timeout: Duration,
    pub heartbeat_secs: Option<u16>,
    /// Prefetch of push consumers (at least the stream's batch size).
    pub prefetch_count: u16,
    pub queue_type: RabbitMqQueueType,
    pub default_max_receive_count: u32,
    pub dead_letter_suffix: String,
    pub max_payload_bytes: usize,
    /// The lease a message taken by `wait_for_messages` runs under until a `receive` claims
    /// it (`queues.default_visibility_timeout_secs`); unclaimed, it comes back after this.
    pub default_visibility_timeout: Duration,
    /// Confirm-mode channels publishing is spread over.
    pub publisher_channels: usize,
    /// Shown by the broker (`rabbitmqctl list_connections client_properties`).
    pub connection_name: String,
    /// TLS for `amqps://` URLs beyond the system's trust store (see [`RabbitMqTls`]).
    pub tls: RabbitMqTls,
}

/// Extra TLS settings for an `amqps://` URL. Without them the broker's certificate is checked
/// against the system's certificate authorities and no client certificate is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RabbitMqTls {
    /// PEM file of certificate authorities to trust too (a private CA).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its private key, for brokers that verify clients.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

impl RabbitMqTls {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }

    /// Reads and checks the files now, so a wrong path or a file that holds no certificate is
    /// a configuration error at start, not a handshake failure later.
    fn load(&self) -> Result<OwnedTLSConfig> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        fn read(key: &str, path: &Path) -> Result<Vec<u8>> {
            std::fs::read(path).map_err(|e| MessagingError::Configuration {
                key: key.into(),
                message: format!("cannot read {}: {e}", path.display()),
            })
        }
        fn certificates(key: &str, path: &Path, pem: &[u8]) -> Result<()> {
            let count = CertificateDer::pem_slice_iter(pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| MessagingError::Configuration {
                    key: key.into(),
                    message: format!("{} is not valid PEM: {e}", path.display()),
                })?
                .len();
            if count == 0 {
                return Err(MessagingError::Configuration {
                    key: key.into(),
                    message: format!("{} holds no certificate", path.display()),
                });
            }
            Ok(())
        }

        let mut config = OwnedTLSConfig::default();
        if let Some(path) = &self.ca_file {
            const KEY: &str = "connection.rabbitmq.tls_ca_file";
            let pem = read(KEY, path)?;
            certificates(KEY, path, &pem)?;
            config.cert_chain =
                Some(
                    String::from_utf8(pem).map_err(|_| MessagingError::Configuration {
                        key: KEY.into(),
                        message: format!("{} is not PEM text", path.display()),
                    })?,
                );
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (None, None) => {}
            (Some(cert_path), Some(key_path)) => {
                const CERT: &str = "connection.rabbitmq.tls_client_cert_file";
                const KEY: &str = "connection.rabbitmq.tls_client_key_file";
                let pem = read(CERT, cert_path)?;
                certificates(CERT, cert_path, &pem)?;
                let key = read(KEY, key_path)?;
                // The key's bytes never go into a message.
                PrivateKeyDer::from_pem_slice(&key).map_err(|_| MessagingError::Configuration {
                    key: KEY.into(),
                    message: format!("{} holds no PEM private key", key_path.display()),
                })?;
                config.identity = Some(OwnedIdentity::PKCS8 { pem, key });
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(MessagingError::Configuration {
                    key: "connection.rabbitmq.tls_client_cert_file".into(),
                    message: "tls_client_cert_file and tls_client_key_file go together".into(),
                })
            }
        }
        Ok(config)
    }
}

impl RabbitMqSettings {
    /// Defaults for `url` (quorum queues, the default `[queues]` settings).
    pub fn new(url: impl Into<String>) -> Self {
        let defaults = MessagingConfig::default();
        RabbitMqSettings {
            url: SecretUrl::new(url),
            vhost: None,
            connection_timeout: Duration::from_secs(10),
            heartbeat_secs: Some(10),
            prefetch_count: 500,
            queue_type: RabbitMqQueueType::Quorum,
            default_max_receive_count: defaults.queues.max_receive_count,
            default_visibility_timeout: defaults.queues.default_visibility_timeout(),
            dead_letter_suffix: defaults.queues.dead_letter_queue_suffix,
            max_payload_bytes: defaults.queues.max_payload_bytes,
            publisher_channels: 4,
            connection_name: "tasker-messaging".into(),
            tls: RabbitMqTls::default(),
        }
    }

    pub fn from_config(config: &MessagingConfig) -> Result<Self> {
        let Some(c) = &config.connection.rabbitmq else {
            return Err(MessagingError::Configuration {
                key: "connection.rabbitmq.url".into(),
                message: "required when provider = rabbitmq (or set AMQP_URL)".into(),
            });
        };
        let mut s = RabbitMqSettings::new(c.url.expose());
        s.vhost = c.vhost.clone();
        if let Some(ms) = c.connection_timeout_ms {
            s.connection_timeout = Duration::from_millis(ms.max(1));
        }
        if let Some(h) = c.heartbeat_interval_secs {
            s.heartbeat_secs = Some(u16::try_from(h).unwrap_or(u16::MAX));
        }
        if let Some(p) = c.prefetch_count {
            s.prefetch_count = p.max(1);
        }
        s.queue_type = c.queue_type.unwrap_or_default();
        s.tls = RabbitMqTls {
            ca_file: c.tls_ca_file.clone(),
            client_cert_file: c.tls_client_cert_file.clone(),
            client_key_file: c.tls_client_key_file.clone(),
        };
        s.default_max_receive_count = config.queues.max_receive_count;
        s.dead_letter_suffix = config.queues.dead_letter_queue_suffix.clone();
        s.max_payload_bytes = config.queues.max_payload_bytes;
        s.default_visibility_timeout = config.queues.default_visibility_timeout();
        Ok(s)
    }

    /// The URL parsed, with vhost and heartbeat applied. Errors never show the password.
    fn uri(&self) -> Result<AMQPUri> {
        let mut uri =
            AMQPUri::from_str(self.url.expose()).map_err(|e| MessagingError::Configuration {
                key: "connection.rabbitmq.url".into(),
                message: format!("{}: {}", self.url.redacted(), scrub(&e, &self.url)),
            })?;
        if let Some(vhost) = &self.vhost {
            uri.vhost = vhost.clone();
        }
        if let Some(h) = self.heartbeat_secs {
            uri.query.heartbeat = Some(h);
        }
        uri.query.connection_timeout = Some(self.connection_timeout.as_millis() as u64);
        if self.tls.is_set() && uri.scheme != AMQPScheme::AMQPS {
            return Err(MessagingError::Configuration {
                key: "connection.rabbitmq.url".into(),
                message: format!(
                    "TLS files are set but {} is not an amqps:// URL",
                    self.url.redacted()
                ),
            });
        }
        Ok(uri)
    }
}

/// Shared by the service and its push streams.
pub(crate) struct Inner {
    settings: RabbitMqSettings,
    connector: Connector,
    leases: Arc<Leases>,
    prefetch: AtomicU16,
    /// Delay queues declared, when, and on which connection (re-declared before their
    /// `x-expires` could pass, and on a new connection, since the broker may have lost them).
    delay_queues: Mutex<HashMap<String, (std::time::Instant, u64)>>,
    /// `max_receive_count` of queues this service created (classic queues enforce it here).
    max_receive: Mutex<HashMap<QueueName, u32>>,
    /// Messages `wait_for_messages` took and keeps for the next receive.
    waiters: wait::Waiters,
    reaper: Mutex<Option<JoinHandle<()>>>,
    me: std::sync::Weak<Inner>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Not aborted: the reaper still ends the leases already handed out, on time.
        self.leases.orphan();
    }
}

/// The RabbitMQ `MessagingService` (with [`AmqpExtensions`]).
pub struct RabbitMqMessageService {
    inner: Arc<Inner>,
    capabilities: Capabilities,
}

impl std::fmt::Debug for RabbitMqMessageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitMqMessageService")
            .field("url", &self.inner.settings.url)
            .field("queue_type", &self.inner.settings.queue_type)
            .finish()
    }
}

impl RabbitMqMessageService {
    /// Builds the service without connecting (`initialize` connects).
    pub fn new(settings: RabbitMqSettings) -> Result<Self> {
        let uri = settings.uri()?;
        let tls = settings.tls.load()?;
        let connector = Connector::new(
            uri,
            tls,
            settings.url.clone(),
            settings.connection_timeout,
            settings.publisher_channels,
            settings.connection_name.clone(),
        );
        let capabilities = Capabilities {
            delayed_send: true,
            lease_extension: true,
            dead_letter_queues: true,
            native_dead_letter: settings.queue_type == RabbitMqQueueType::Quorum,
            fifo_order: true,
            exchange_routing: true,
            push_consumer: true,
            transactional_send: false,
            receipt_fencing: true,
            detailed_stats: false,
            wakeup_notifications: true,
            // AMQP requeues what a closed connection held unacked.
            durable_leases: false,
            pgmq_extensions: false,
            max_payload_bytes: settings.max_payload_bytes,
            max_batch_size: MAX_BATCH,
            timer_resolution: Duration::from_millis(50),
        };
        Ok(RabbitMqMessageService {
            inner: Arc::new_cyclic(|me| Inner {
                prefetch: AtomicU16::new(settings.prefetch_count),
                settings,
                connector,
                leases: Arc::new(Leases::new()),
                delay_queues: Mutex::new(HashMap::new()),
                max_receive: Mutex::new(HashMap::new()),
                waiters: wait::Waiters::default(),
                reaper: Mutex::new(None),
                me: me.clone(),
            }),
            capabilities,
        })
    }

    pub fn from_config(config: &MessagingConfig) -> Result<Self> {
        Self::new(RabbitMqSettings::from_config(config)?)
    }
}

fn invalid(queue: &QueueName, problem: ReceiptProblem) -> MessagingError {
    let reason = match problem {
        ReceiptProblem::Malformed => "not a RabbitMQ receipt",
        ReceiptProblem::OtherQueue => "the receipt belongs to another queue",
        ReceiptProblem::Unknown => "the receipt is unknown to this service (leases live on the connection that received the message)",
        ReceiptProblem::Ended(Ended::Released) => {
            "the lease ended and the message was handed back for redelivery"
        }
        ReceiptProblem::Ended(Ended::Lost) => {
            "the connection holding the lease closed; the message will be redelivered"
        }
        ReceiptProblem::Ended(Ended::Deleted) => "the message was deleted",
        ReceiptProblem::Ended(Ended::DeadLettered) => "the message was dead-lettered",
    };
    MessagingError::InvalidReceipt {
        queue: queue.as_str().to_owned(),
        reason: reason.into(),
    }
}

fn is_soft(e: &lapin::Error, soft: AMQPSoftError) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(p) if *p.kind() == AMQPErrorKind::Soft(soft))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

/// RabbitMQ closes a channel whose delivery stays unacked past its `consumer_timeout`
/// (30 minutes by default), which ends every lease on that channel early (the messages are
/// redelivered). Leases that long need the broker's timeout raised.
const BROKER_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

fn warn_if_past_consumer_timeout(visibility_timeout: Duration) {
    if visibility_timeout >= BROKER_CONSUMER_TIMEOUT {
        tracing::warn!(
            ?visibility_timeout,
            "visibility timeout at or past RabbitMQ's default consumer_timeout (30 min): \
             the broker may close the channel and redeliver early unless it is raised"
        );
    }
}

/// Delays are rounded up to buckets (50 ms up to a second, then 1/16 of a power of two), so
/// a handful of delay queues serve every delay.
fn delay_bucket_ms(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_micros().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .clamp(1, i32::MAX as u64 / 2);
    if ms <= 1000 {
        return ms.div_ceil(50) * 50;
    }
    let step = 1u64 << (63 - ms.leading_zeros() - 4);
    ms.div_ceil(step) * step
}

impl Inner {
    fn errors(&self) -> &connection::ErrorMapper {
        &self.connector.errors
    }

    fn map(&self, op: &'static str, queue: Option<&QueueName>, e: lapin::Error) -> MessagingError {
        self.errors().map(op, queue, e)
    }

    /// The live connection; starts the lease reaper on first use.
    async fn link(&self) -> Result<Arc<Link>> {
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

    fn check_payload(&self, size: usize) -> Result<()> {
        let max = self.settings.max_payload_bytes;
        if size > max {
            return Err(MessagingError::PayloadTooLarge { size, max });
        }
        Ok(())
    }

    /// The number of ready messages, or `QueueNotFound`.
    async fn ready_count(&self, link: &Link, queue: &QueueName) -> Result<u32> {
        let ch = link.admin(self.errors()).await?;
        let r = ch
            .queue_declare(queue.as_str().into(), passive(), FieldTable::default())
            .await;
        link.give_back(ch);
        r.map(|q| q.message_count())
            .map_err(|e| self.map("queue.declare(passive)", Some(queue), e))
    }

    fn dead_letter_queue(&self, queue: &QueueName) -> Result<QueueName> {
        queue.dead_letter(&self.settings.dead_letter_suffix)
    }

    fn queue_type_arg(&self) -> AMQPValue {
        long_string(match self.settings.queue_type {
            RabbitMqQueueType::Quorum => "quorum",
            RabbitMqQueueType::Classic => "classic",
        })
    }

    /// Publishes `items` to one confirm channel, all before awaiting any confirm.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        items: Vec<(Bytes, BasicProperties)>,
        queue: Option<&QueueName>,
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let link = self.link().await?;
        let ch = link.publisher(self.errors()).await?;
        let mut confirms = Vec::with_capacity(items.len());
        for (payload, props) in items {
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    &payload,
                    props,
                )
                .await
                .map_err(|e| self.map("basic.publish", queue, e))?;
            confirms.push(confirm);
        }
        let mut first_error = None;
        for result in futures::future::join_all(confirms).await {
            let error = match result {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => continue,
                Ok(Confirmation::Ack(Some(returned))) => match queue {
                    Some(q) if returned.reply_code == 312 => MessagingError::QueueNotFound {
                        queue: q.as_str().to_owned(),
                    },
                    _ => MessagingError::Provider {
                        provider: ProviderKind::Rabbitmq,
                        operation: "basic.publish",
                        message: format!(
                            "returned by the broker: {} {}",
                            returned.reply_code, returned.reply_text
                        ),
                        retryable: false,
                    },
                },
                Ok(Confirmation::Nack(_)) => MessagingError::Provider {
                    provider: ProviderKind::Rabbitmq,
                    operation: "basic.publish",
                    message: "the broker refused the message (nack)".into(),
                    retryable: true,
                },
                Err(e) => self.map("publisher confirm", queue, e),
            };
            first_error.get_or_insert(error);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Declares (or re-declares before it could expire) the delay queue for `ms` in front of
    /// `queue`; returns its name.
    async fn delay_queue(&self, link: &Link, queue: &QueueName, ms: u64) -> Result<String> {
        let name = format!("{queue}.delay.{ms}");
        let expires_ms = ms * 2 + 60_000;
        let fresh = self
            .delay_queues
            .lock()
            .get(&name)
            .is_some_and(|(at, epoch)| {
                *epoch == link.epoch && at.elapsed() < Duration::from_millis(expires_ms / 2)
            });
        if fresh {
            return Ok(name);
        }
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), long_string("classic"));
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms as i64));
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(expires_ms as i64),
        );
        args.insert("x-dead-letter-exchange".into(), long_string(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            long_string(queue.as_str()),
        );
        let ch = link.admin(self.errors()).await?;
        let r = ch
            .queue_declare(name.as_str().into(), durable(), args)
            .await;
        link.give_back(ch);
        r.map_err(|e| self.map("queue.declare(delay)", None, e))?;
        self.delay_queues
            .lock()
            .insert(name.clone(), (std::time::Instant::now(), link.epoch));
        Ok(name)
    }

    async fn send_many(&self, queue: &QueueName, messages: Vec<OutgoingMessage>) -> Result<()> {
        let (now, delayed): (Vec<_>, Vec<_>) =
            messages.into_iter().partition(|m| m.delay.is_zero());
        let items = now
            .iter()
            .map(|m| (m.payload.clone(), codec::outgoing_properties(m)))
            .collect();
        self.publish_confirmed("", queue.as_str(), true, items, Some(queue))
            .await?;
        if delayed.is_empty() {
            return Ok(());
        }
        // The delay queue dead-letters into the queue, so check the queue exists now.
        let link = self.link().await?;
        self.ready_count(&link, queue).await?;
        let mut by_bucket: HashMap<u64, Vec<(Bytes, BasicProperties)>> = HashMap::new();
        for m in &delayed {
            by_bucket
                .entry(delay_bucket_ms(m.delay))
                .or_default()
                .push((m.payload.clone(), codec::outgoing_properties(m)));
        }
        for (ms, items) in by_bucket {
            let dq = self.delay_queue(&link, queue, ms).await?;
            self.publish_confirmed("", &dq, true, items, None).await?;
        }
        Ok(())
    }

    fn max_receive_count(&self, queue: &QueueName) -> u32 {
        if let Some(max) = self.max_receive.lock().get(queue) {
            return *max;
        }
        if queue
            .as_str()
            .ends_with(self.settings.dead_letter_suffix.as_str())
        {
            0
        } else {
            self.settings.default_max_receive_count
        }
    }

    /// Hands leased messages back to their queues. Quorum queues count the delivery and
    /// dead-letter at the limit themselves, so a nack is enough. A classic queue counts
    /// nothing: the message is published again with its receive count in a header (or
    /// dead-lettered at `max_receive_count`), then the delivery is acked.
    async fn release_leases(&self, leases: Vec<Lease>) {
        // The queues this service declares are all of the configured type. The header alone
        // cannot tell: RabbitMQ 3.10 leaves `x-delivery-count` off a quorum queue's first
        // delivery to a consumer (it is on `basic.get`'s), and republishing such a message
        // would start its count, and the broker's delivery limit, from zero again.
        let quorum_queues = self.settings.queue_type == RabbitMqQueueType::Quorum;
        let (quorum, classic): (Vec<_>, Vec<_>) = leases
            .into_iter()
            .partition(|l| quorum_queues || codec::counted_by_broker(&l.properties));
        leases::nack_all(quorum).await;
        for lease in classic {
            if !lease.channel.connected() {
                continue;
            }
            let max = self.max_receive_count(&lease.queue);
            let moved = if max > 0 && lease.receive_count >= max {
                self.copy_to_dead_letter_queue(
                    &lease,
                    DeadLetterReason::MaxReceiveCountExceeded {
                        max_receive_count: max,
                    },
                )
                .await
            } else {
                let props = codec::with_header(
                    &lease.properties,
                    codec::H_RECEIVE_COUNT,
                    AMQPValue::LongLongInt(i64::from(lease.receive_count)),
                );
                let item = vec![(lease.payload.clone(), props)];
                self.publish_confirmed("", lease.queue.as_str(), true, item, Some(&lease.queue))
                    .await
            };
            let settled = match moved {
                Ok(()) => lease.channel.ack(vec![lease.tag]).await,
                Err(e) => {
                    tracing::warn!(queue = %lease.queue, error = %e, "requeue by publish failed; nacking");
                    lease.channel.release(vec![lease.tag]).await
                }
            };
            if let Err(e) = settled {
                tracing::debug!(error = %e, "settling a released lease failed");
            }
        }
    }

    /// Publishes a copy of the leased message to the queue's DLQ with its dead-letter record
    /// (confirmed), recreating the DLQ if it was deleted meanwhile.
    async fn copy_to_dead_letter_queue(
        &self,
        lease: &Lease,
        reason: DeadLetterReason,
    ) -> Result<()> {
        let queue = &lease.queue;
        let dlq = self.dead_letter_queue(queue)?;
        let reason_json = serde_json::to_string(&reason).unwrap_or_default();
        let props = codec::moved_properties(
            &lease.properties,
            [
                (H_DL_SOURCE, long_string(queue.as_str())),
                (H_DL_REASON, long_string(&reason_json)),
                (
                    H_DL_COUNT,
                    AMQPValue::LongLongInt(i64::from(lease.receive_count)),
                ),
                (
                    H_DL_AT,
                    AMQPValue::LongLongInt(Utc::now().timestamp_millis()),
                ),
            ],
        );
        let item = vec![(lease.payload.clone(), props.clone())];
        let published = self
            .publish_confirmed("", dlq.as_str(), true, item, Some(&dlq))
            .await;
        if !matches!(published, Err(MessagingError::QueueNotFound { .. })) {
            return published;
        }
        let link = self.link().await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), self.queue_type_arg());
        let ch = link.admin(self.errors()).await?;
        let r = ch.queue_declare(dlq.as_str().into(), durable(), args).await;
        link.give_back(ch);
        r.map_err(|e| self.map("queue.declare", Some(&dlq), e))?;
        let item = vec![(lease.payload.clone(), props)];
        self.publish_confirmed("", dlq.as_str(), true, item, Some(&dlq))
            .await
    }

    /// Takes up to `n` more messages through a consumer with prefetch `n` on the lease
    /// channel, cancelled as soon as it delivered `n` or went quiet. Deliveries that arrive
    /// before the cancel is confirmed are kept too (the prefetch bounds them by `n`).
    async fn consume_window(
        &self,
        lc: &leases::LeaseChannel,
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
    async fn receive(
        &self,
        queue: &QueueName,
        max: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
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
                .extend(queue, &kept.metadata.receipt_handle, deadline)
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
        let lc = link.queue_channel(queue, self.errors()).await?;
        let _in_order = lc.receive.lock().await;
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
                .map(|d| self.lease_delivery(queue, &lc, d, deadline, now, expires)),
        );
        Ok(out)
    }

    /// Registers a lease for a delivery on `channel`; returns the received message.
    fn lease_delivery(
        &self,
        queue: &QueueName,
        channel: &Arc<leases::LeaseChannel>,
        d: lapin::message::Delivery,
        deadline: Instant,
        now: chrono::DateTime<Utc>,
        expires: Option<chrono::DateTime<Utc>>,
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
        });
        decoded.into_received(receipt, expires)
    }

    /// Declares the dead-letter exchange, the DLQ and its binding, then the queue. Returns
    /// whether `max_receive_count` applies: false when the queue already existed with other
    /// options (the broker refuses the declaration; the first creation's options stay).
    /// Declaring directly, rather than checking with a passive declare first, keeps the
    /// common case (a new or identical queue) free of channel errors.
    async fn create_queue(&self, queue: &QueueName, max_receive_count: u32) -> Result<bool> {
        let link = self.link().await?;
        let dlq = self.dead_letter_queue(queue)?;
        let ch = link.admin(self.errors()).await?;
        let mut declared = Vec::new();
        let result = async {
            ch.exchange_declare(
                DEAD_LETTER_EXCHANGE.into(),
                lapin::ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
            declared.push(Declaration::Exchange {
                name: DEAD_LETTER_EXCHANGE.into(),
                kind: lapin::ExchangeKind::Direct,
                durable: true,
            });
            let mut dlq_args = FieldTable::default();
            dlq_args.insert("x-queue-type".into(), self.queue_type_arg());
            ch.queue_declare(dlq.as_str().into(), durable(), dlq_args.clone())
                .await?;
            declared.push(Declaration::Queue {
                name: dlq.as_str().into(),
                args: dlq_args,
            });
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), self.queue_type_arg());
            if max_receive_count > 0 {
                let key = format!("{queue}.{max_receive_count}");
                ch.queue_bind(
                    dlq.as_str().into(),
                    DEAD_LETTER_EXCHANGE.into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
                declared.push(Declaration::Binding {
                    queue: dlq.as_str().into(),
                    exchange: DEAD_LETTER_EXCHANGE.into(),
                    key: key.clone(),
                });
                args.insert(
                    "x-dead-letter-exchange".into(),
                    long_string(DEAD_LETTER_EXCHANGE),
                );
                args.insert("x-dead-letter-routing-key".into(), long_string(&key));
                if self.settings.queue_type == RabbitMqQueueType::Quorum {
                    args.insert(
                        "x-delivery-limit".into(),
                        AMQPValue::LongLongInt(i64::from(max_receive_count) - 1),
                    );
                }
            }
            ch.queue_declare(queue.as_str().into(), durable(), args.clone())
                .await?;
            declared.push(Declaration::Queue {
                name: queue.as_str().into(),
                args,
            });
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                link.give_back(ch);
                // Declared again on every new connection (see `connection.rs`).
                for d in declared {
                    self.connector.record(d);
                }
                Ok(true)
            }
            // It exists with other options: the first creation's stay.
            Err(e) if is_soft(&e, AMQPSoftError::PRECONDITIONFAILED) => Ok(false),
            Err(e) => Err(self.map("queue.declare", Some(queue), e)),
        }
    }

    /// `basic.get`s up to `max` messages from `queue` on an exclusive admin channel.
    async fn drain(
        &self,
        ch: &Channel,
        queue: &QueueName,
        max: usize,
    ) -> lapin::Result<Vec<lapin::message::Delivery>> {
        let gets = (0..max)
            .map(|_| ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }));
        let mut out = Vec::new();
        for r in futures::future::join_all(gets).await {
            if let Some(m) = r? {
                out.push(m.delivery);
            }
        }
        Ok(out)
    }

    async fn redrive(&self, queue: &QueueName, max: usize) -> Result<u64> {
        let link = self.link().await?;
        self.ready_count(&link, queue).await?;
        let dlq = self.dead_letter_queue(queue)?;
        let mut moved = 0u64;
        while (moved as usize) < max {
            let ch = link.admin(self.errors()).await?;
            let step = (max - moved as usize).min(100);
            let got = match self.drain(&ch, &dlq, step).await {
                Ok(got) => got,
                Err(e) if is_soft(&e, AMQPSoftError::NOTFOUND) => return Ok(moved),
                Err(e) => return Err(self.map("basic.get", Some(&dlq), e)),
            };
            let Some(last_tag) = got.last().map(|d| d.delivery_tag) else {
                link.give_back(ch);
                break;
            };
            let n = got.len();
            let items = got
                .into_iter()
                .map(|d| {
                    (
                        Bytes::from(d.data),
                        codec::moved_properties(&d.properties, []),
                    )
                })
                .collect();
            if let Err(e) = self
                .publish_confirmed("", queue.as_str(), true, items, Some(queue))
                .await
            {
                let _ = ch
                    .basic_nack(
                        last_tag,
                        BasicNackOptions {
                            multiple: true,
                            requeue: true,
                        },
                    )
                    .await;
                return Err(e);
            }
            // Everything got on this exclusive channel is ours: one ack covers it.
            ch.basic_ack(last_tag, BasicAckOptions { multiple: true })
                .await
                .map_err(|e| self.map("basic.ack", Some(&dlq), e))?;
            link.give_back(ch);
            moved += n as u64;
            if n < step {
                break;
            }
        }
        Ok(moved)
    }
}

#[async_trait]
impl MessagingService for RabbitMqMessageService {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Rabbitmq
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn resource_requirements(&self) -> ResourceRequirements {
        let s = &self.inner.settings;
        // Worst case held in memory: one full prefetch window of largest payloads.
        let prefetch = u64::from(s.prefetch_count) * s.max_payload_bytes as u64;
        ResourceRequirements {
            db_connections: 0,
            memory_mb: prefetch.div_ceil(1 << 20).max(1),
        }
    }

    async fn initialize(&self) -> Result<()> {
        self.inner.link().await.map(|_| ())
    }

    async fn health_check(&self) -> Result<MessagingHealth> {
        match self.inner.link().await {
            Ok(_) => Ok(MessagingHealth::Healthy {
                queue_depth: 0,
                in_flight: self.inner.leases.live_count(),
            }),
            Err(e) => Ok(MessagingHealth::Unhealthy {
                error: e.to_string(),
            }),
        }
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.connector.close().await;
        if let Some(reaper) = self.inner.reaper.lock().take() {
            reaper.abort();
        }
        Ok(())
    }

    async fn create_queue_with(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        let max = options
            .max_receive_count
            .unwrap_or(self.inner.settings.default_max_receive_count);
        if self.inner.create_queue(queue, max).await? {
            self.inner.max_receive.lock().insert(queue.clone(), max);
        }
        Ok(())
    }

    async fn send(&self, queue: &QueueName, message: OutgoingMessage) -> Result<MessageId> {
        self.inner.check_payload(message.payload.len())?;
        let id = message.message_id;
        self.inner.send_many(queue, vec![message]).await?;
        Ok(id)
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        for m in &messages {
            self.inner.check_payload(m.payload.len())?;
        }
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let ids = messages.iter().map(|m| m.message_id).collect();
        self.inner.send_many(queue, messages).await?;
        Ok(ids)
    }

    async fn receive(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        if max_messages == 0 {
            return Ok(Vec::new());
        }
        warn_if_past_consumer_timeout(visibility_timeout);
        self.inner
            .receive(queue, max_messages.min(MAX_BATCH), visibility_timeout)
            .await
    }

    async fn delete_message(&self, queue: &QueueName, receipt: &ReceiptHandle) -> Result<()> {
        let outcome = self
            .delete_messages(queue, std::slice::from_ref(receipt))
            .await?;
        match outcome.rejected.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let leases = &self.inner.leases;
        let mut outcome = DeleteOutcome::default();
        // Grouped by channel: nearly always one (a stream's, or the queue's lease channel).
        struct Group {
            channel: Arc<leases::LeaseChannel>,
            ids: Vec<u64>,
            tags: Vec<u64>,
            /// Index of each lease's receipt in `receipts`.
            at: Vec<usize>,
        }
        let mut groups: Vec<Group> = Vec::new();
        for (i, taken) in leases.take_many(queue, receipts).into_iter().enumerate() {
            match taken {
                Ok((id, lease)) => {
                    let g = match groups.iter().position(|g| g.channel.id == lease.channel.id) {
                        Some(g) => g,
                        None => {
                            groups.push(Group {
                                channel: lease.channel.clone(),
                                ids: Vec::with_capacity(receipts.len()),
                                tags: Vec::with_capacity(receipts.len()),
                                at: Vec::with_capacity(receipts.len()),
                            });
                            groups.len() - 1
                        }
                    };
                    let g = &mut groups[g];
                    g.ids.push(id);
                    g.tags.push(lease.tag);
                    g.at.push(i);
                }
                // Idempotent: the message is already gone.
                Err(ReceiptProblem::Ended(Ended::Deleted | Ended::DeadLettered)) => {
                    outcome.deleted += 1
                }
                Err(problem) => outcome
                    .rejected
                    .push((receipts[i].clone(), invalid(queue, problem))),
            }
        }
        for g in groups {
            match g.channel.ack(g.tags).await {
                Ok(()) => {
                    outcome.deleted += g.ids.len();
                    leases.ended_many(g.ids, Ended::Deleted);
                }
                Err(e) => {
                    let error = self.inner.map("basic.ack", Some(queue), e);
                    leases.ended_many(g.ids, Ended::Lost);
                    for i in g.at {
                        outcome.rejected.push((receipts[i].clone(), error.clone()));
                    }
                }
            }
        }
        Ok(outcome)
    }

    async fn change_message_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        visibility_timeout: Duration,
    ) -> Result<()> {
        let leases = &self.inner.leases;
        if !visibility_timeout.is_zero() {
            warn_if_past_consumer_timeout(visibility_timeout);
            return leases
                .extend(queue, receipt, Instant::now() + visibility_timeout)
                .map_err(|p| invalid(queue, p));
        }
        let (id, lease) = leases.take(queue, receipt).map_err(|p| invalid(queue, p))?;
        leases.ended(id, Ended::Released);
        self.inner.release_leases(vec![lease]).await;
        Ok(())
    }

    async fn dead_letter_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let inner = &self.inner;
        let (id, lease) = inner
            .leases
            .take(queue, receipt)
            .map_err(|p| invalid(queue, p))?;
        let reason = DeadLetterReason::Rejected {
            reason: reason.to_owned(),
        };
        // Copy first (confirmed), then ack: a crash in between duplicates, never loses.
        let published = inner.copy_to_dead_letter_queue(&lease, reason).await;
        if let Err(e) = published {
            let _ = lease.channel.release(vec![lease.tag]).await;
            inner.leases.ended(id, Ended::Released);
            return Err(e);
        }
        let acked = lease.channel.ack(vec![lease.tag]).await;
        inner.leases.ended(id, Ended::DeadLettered);
        acked.map_err(|e| inner.map("basic.ack", Some(queue), e))
    }

    fn dead_letter_queue_name(&self, queue: &QueueName) -> Result<QueueName> {
        self.inner.dead_letter_queue(queue)
    }

    async fn redrive_dead_letters(&self, queue: &QueueName, max_messages: usize) -> Result<u64> {
        self.inner.redrive(queue, max_messages).await
    }

    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let inner = &self.inner;
        let link = inner.link().await?;
        let ready = inner.ready_count(&link, queue).await?;
        let dlq = inner.dead_letter_queue(queue)?;
        let dead = match inner.ready_count(&link, &dlq).await {
            Ok(n) => Some(u64::from(n)),
            Err(MessagingError::QueueNotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(QueueStats {
            queue_name: queue.clone(),
            message_count: u64::from(ready),
            // AMQP does not report unacked counts; these are the leases this service holds.
            in_flight_count: Some(inner.leases.live_count_for(queue)),
            delayed_count: None,
            oldest_message_age_seconds: None,
            dead_letter_count: dead,
        })
    }

    async fn purge_queue(&self, queue: &QueueName) -> Result<u64> {
        let inner = &self.inner;
        let link = inner.link().await?;
        let ch = link.admin(inner.errors()).await?;
        let r = ch
            .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
            .await;
        link.give_back(ch);
        let mut purged = r
            .map(u64::from)
            .map_err(|e| inner.map("queue.purge", Some(queue), e))?;
        // Delayed messages wait in delay queues; those this service declared are purged too.
        let prefix = format!("{queue}.delay.");
        let delay_queues: Vec<String> = inner
            .delay_queues
            .lock()
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for name in delay_queues {
            let ch = link.admin(inner.errors()).await?;
            // An expired delay queue is gone: nothing to purge there.
            if let Ok(n) = ch
                .queue_purge(name.as_str().into(), QueuePurgeOptions::default())
                .await
            {
                purged += u64::from(n);
                link.give_back(ch);
            }
        }
        Ok(purged)
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        let inner = &self.inner;
        let link = inner.link().await?;
        // queue.delete of a missing queue succeeds in AMQP; the contract says QueueNotFound.
        inner.ready_count(&link, queue).await?;
        let dlq = inner.dead_letter_queue(queue)?;
        let prefix = format!("{queue}.delay.");
        let delay_queues: Vec<String> = {
            let mut known = inner.delay_queues.lock();
            let names: Vec<String> = known
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            for n in &names {
                known.remove(n);
            }
            names
        };
        inner
            .connector
            .forget_queues(&[queue.as_str(), dlq.as_str()]);
        inner.waiters.forget(queue);
        let ch = link.admin(inner.errors()).await?;
        let mut result = ch
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| inner.map("queue.delete", Some(queue), e));
        for name in std::iter::once(dlq.as_str().to_owned()).chain(delay_queues) {
            if let Err(e) = ch
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
            {
                if result.is_ok() {
                    result = Err(inner.map("queue.delete", None, e));
                }
            }
        }
        link.give_back(ch);
        result
    }

    async fn wait_for_messages(&self, queue: &QueueName, max_wait: Duration) {
        self.inner.wait_for_messages(queue, max_wait).await
    }

    fn native_consumer_stream(
        &self,
        queue: &QueueName,
        options: &ConsumerOptions,
    ) -> Option<MessageStream> {
        Some(stream::push_stream(
            self.inner.clone(),
            queue.clone(),
            options.clone(),
        ))
    }

    fn amqp(&self) -> Option<&dyn AmqpExtensions> {
        Some(self)
    }
}

#[async_trait]
impl AmqpExtensions for RabbitMqMessageService {
    async fn declare_exchange(&self, name: &str, kind: ExchangeKind, durable: bool) -> Result<()> {
        let inner = &self.inner;
        let link = inner.link().await?;
        let ch = link.admin(inner.errors()).await?;
        let kind = match kind {
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Headers => lapin::ExchangeKind::Headers,
        };
        let r = ch
            .exchange_declare(
                name.into(),
                kind.clone(),
                ExchangeDeclareOptions {
                    durable,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        link.give_back(ch);
        r.map_err(|e| inner.map("exchange.declare", None, e))?;
        inner.connector.record(Declaration::Exchange {
            name: name.to_owned(),
            kind,
            durable,
        });
        Ok(())
    }

    async fn bind_queue(&self, queue: &QueueName, exchange: &str, routing_key: &str) -> Result<()> {
        let inner = &self.inner;
        let link = inner.link().await?;
        let ch = link.admin(inner.errors()).await?;
        let r = ch
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        link.give_back(ch);
        r.map_err(|e| inner.map("queue.bind", Some(queue), e))?;
        inner.connector.record(Declaration::Binding {
            queue: queue.as_str().to_owned(),
            exchange: exchange.to_owned(),
            key: routing_key.to_owned(),
        });
        Ok(())
    }

    async fn publish_to_exchange(
        &self,
        exchange: &str,
        routing_key: &str,
        message: OutgoingMessage,
    ) -> Result<MessageId> {
        let inner = &self.inner;
        inner.check_payload(message.payload.len())?;
        let id = message.message_id;
        // An exchange that routes nowhere is not an error (fan-out to no subscriber).
        let item = vec![(
            message.payload.clone(),
            codec::outgoing_properties(&message),
        )];
        inner
            .publish_confirmed(exchange, routing_key, false, item, None)
            .await?;
        Ok(id)
    }

    async fn set_qos(&self, prefetch_count: u16) -> Result<()> {
        self.inner
            .prefetch
            .store(prefetch_count.max(1), Ordering::Relaxed);
        Ok(())
    }

    async fn create_consumer_stream(
        &self,
        queue: &QueueName,
        options: &ConsumerOptions,
    ) -> Result<MessageStream> {
        // Fail now on a missing queue rather than on the first poll.
        let link = self.inner.link().await?;
        self.inner.ready_count(&link, queue).await?;
        Ok(stream::push_stream(
            self.inner.clone(),
            queue.clone(),
            options.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_few_buckets() {
        assert_eq!(delay_bucket_ms(Duration::from_millis(1)), 50);
        assert_eq!(delay_bucket_ms(Duration::from_millis(600)), 600);
        assert_eq!(delay_bucket_ms(Duration::from_micros(600_001)), 650);
        for ms in [1_001u64, 5_000, 59_999, 3_600_000] {
            let b = delay_bucket_ms(Duration::from_millis(ms));
            assert!(b >= ms && b <= ms + ms / 16, "{ms} -> {b}");
        }
    }

    #[test]
    fn config_selects_the_provider_and_its_queue_type() {
        let config = MessagingConfig::from_toml_str(
            "provider = 'rabbitmq'\n[connection.rabbitmq]\nurl = 'amqp://u:pw@127.0.0.1:5672/%2f'\nvhost = 'jobs'\nprefetch_count = 64\nqueue_type = 'classic'\n[queues]\nmax_receive_count = 3",
        )
        .unwrap();
        let s = RabbitMqSettings::from_config(&config).unwrap();
        assert_eq!(s.queue_type, RabbitMqQueueType::Classic);
        assert_eq!(s.prefetch_count, 64);
        assert_eq!(s.default_max_receive_count, 3);
        assert_eq!(s.uri().unwrap().vhost, "jobs");
        // Built without connecting; capabilities say what classic queues can do.
        let svc = crate::create_service(&config).unwrap();
        assert_eq!(svc.provider(), ProviderKind::Rabbitmq);
        assert!(svc.amqp().is_some());
        assert!(!svc.capabilities().native_dead_letter);
        assert!(crate::available_providers().contains(&ProviderKind::Rabbitmq));
        let bad = MessagingConfig::from_toml_str(
            "provider = 'rabbitmq'\n[connection.rabbitmq]\nurl = 'amqp://u:pw@h/%2f'\nqueue_type = 'stream'",
        );
        assert!(bad.is_err());
    }

    #[test]
    fn config_carries_the_tls_files() {
        let config = MessagingConfig::from_toml_str(
            "provider = 'rabbitmq'\n[connection.rabbitmq]\nurl = 'amqps://u:pw@broker:5671/%2f'\ntls_ca_file = '/etc/tasker/ca.pem'\ntls_client_cert_file = '/etc/tasker/client.pem'\ntls_client_key_file = '/etc/tasker/client-key.pem'",
        )
        .unwrap();
        let s = RabbitMqSettings::from_config(&config).unwrap();
        assert_eq!(
            s.tls,
            RabbitMqTls {
                ca_file: Some("/etc/tasker/ca.pem".into()),
                client_cert_file: Some("/etc/tasker/client.pem".into()),
                client_key_file: Some("/etc/tasker/client-key.pem".into()),
            }
        );
        assert_eq!(s.uri().unwrap().scheme, AMQPScheme::AMQPS);
        // The files are read when the service is built: these do not exist.
        match RabbitMqMessageService::new(s) {
            Err(MessagingError::Configuration { key, .. }) => {
                assert_eq!(key, "connection.rabbitmq.tls_ca_file")
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn settings_never_show_the_password() {
        let s = RabbitMqSettings::new("amqp://app:hunter2@127.0.0.1:5672/%2f");
        let svc = RabbitMqMessageService::new(s.clone()).unwrap();
        for shown in [format!("{s:?}"), format!("{svc:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let bad = RabbitMqSettings::new("amqp://app:hunter2@[::1");
        let err = RabbitMqMessageService::new(bad).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
