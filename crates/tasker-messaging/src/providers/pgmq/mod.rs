//! PGMQ on PostgreSQL: the default production provider.
//!
//! Works on any PostgreSQL where pgmq is present, as the extension (managed services ship it)
//! or as pgmq's SQL API installed by the `pgmq` crate's embedded installer
//! (`install_sql = true`, or [`PgmqMessageService::install_sql`]); the extension is detected
//! and never installed over. pgmq >= 1.10 is required (message headers, `last_read_at`).
//!
//! # What a message looks like in PostgreSQL
//!
//! Every message is an ordinary pgmq row (`pgmq.q_<queue>`), so plain `pgmq.read(...)` reads
//! what we send and we receive what plain `pgmq.send(...)` sends. pgmq's `message` column is
//! `jsonb`, which re-formats JSON text (spacing, key order, duplicate keys), while our contract
//! keeps payload bytes exactly. So:
//!
//! * a payload that is JSON is stored as that JSON in `message` (other clients see the
//!   document itself). When it is serde's compact rendering of itself (what the typed layer
//!   sends), our column `tasker_key_order` keeps the order of its object keys, which jsonb
//!   forgets, and on receive the exact bytes are rebuilt from jsonb's text (`codec.rs`): the
//!   payload is stored once. Other JSON (odd spacing, duplicate keys, number forms serde would
//!   print differently) keeps its exact text in the header `tasker_payload` when jsonb's text
//!   differs from it; PostgreSQL makes that comparison in the INSERT itself.
//! * a payload that is UTF-8 text but not JSON is stored as a JSON string
//!   (`tasker_payload_encoding: "text"`), and binary payloads as a base64 JSON string
//!   (`"base64"`): still valid jsonb, still readable by any client.
//! * the message id and correlation id are binary columns of ours on the queue table
//!   (`tasker_message_id`, `tasker_correlation_id`, uuid), added to a queue when this
//!   provider first uses it; pgmq's functions name their columns and never see them, and
//!   plain SQL can select them. Our archive keeps them. Dead letters carry
//!   `tasker_dead_letter` (source queue, reason, receive count, times) in headers. Headers
//!   another client set are kept through dead-lettering and redrive.
//! * a message without our id (sent by plain SQL) is received with its jsonb text as
//!   payload and a stable id derived from where it was first seen
//!   ([`MessageId::derived`]`(queue, msg_id)`), recorded as `tasker_origin` when it moves, so
//!   the id survives dead-lettering and redrive. Rows written before the id columns existed
//!   (ids as headers) are still read.
//!
//! # Leases and receipts
//!
//! A receipt is `(msg_id, read_ct)` plus a tag of the queue name. pgmq increments `read_ct`
//! on every read, so a receipt from a lease that ended and was handed to another receiver no
//! longer matches: delete, visibility changes and dead-lettering check it in the same SQL
//! statement (receipt fencing). Timers use PostgreSQL's clock with millisecond precision (our
//! statements set `vt` directly; pgmq's own `read` takes whole seconds, and
//! [`PgmqExtensions::read_batch`] rounds up to them).
//!
//! # Dead letters
//!
//! `max_receive_count` per queue lives in `tasker_messaging.queues`. A receive that meets a
//! message already received that many times does not lease it, counts it, and before
//! returning moves such messages to `<queue><suffix>` with one statement (delete + insert in
//! one transaction: never lost, never duplicated). The move is its own statement so that
//! the common receive, which meets none, costs what pgmq's own `read` costs.
//!
//! # Wakeups
//!
//! One `LISTEN` connection per service wakes `wait_for_messages` for every queue (see
//! `listener.rs`). Our statements notify only when a queue may go from nothing receivable to
//! something (NOTIFY serializes committing senders, so it is kept off the busy path), and a
//! trigger notifies for other clients' plain `pgmq.send` (see `sql.rs`).
//!
//! # Why the key order and id columns
//!
//! Under concurrent batch sends PostgreSQL's WAL is the limit, so row size is throughput. A
//! `StepMessage` row is 228 bytes in plain pgmq; with an exact copy of the payload beside the
//! document it was 543; with the key order and the ids as jsonb headers 395; with the ids
//! and key order in binary columns 278 (see docs/benchmarks.md, "PGMQ provider").

mod codec;
mod install;
mod listener;
mod sql;

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use parking_lot::{Mutex, RwLock};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Acquire, PgPool, Postgres, Row};
use tokio::sync::watch;
use uuid::Uuid;

pub use self::install::{InstallOutcome, PgmqInstallation};
use self::listener::Wakeups;
use self::sql::{QueueSql, KIND_BASE64, KIND_COMPACT, KIND_JSON, KIND_TEXT};
use crate::config::{MessagingConfig, ResourceValidationConfig};
use crate::error::{MessagingError, Result};
use crate::message::{
    CorrelationId, DeadLetterInfo, DeadLetterReason, MessageId, OutgoingMessage,
    QueuedMessageMetadata, ReceiptHandle, ReceivedMessage,
};
use crate::queue_name::QueueName;
use crate::resources::{ResourceRequirements, SystemResourceLimits};
use crate::secret::{scrub, SecretUrl};
use crate::service::{
    Capabilities, DeleteOutcome, MessagingHealth, MessagingService, PgmqExtensions, ProviderKind,
    QueueOptions, QueueStats,
};

/// Largest batch for one send or receive: one statement with arrays of this length.
const MAX_BATCH: usize = 10_000;
/// Longest lease or delay accepted: a century, far inside PostgreSQL's interval range.
const MAX_TIMER_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

/// Settings of the PGMQ provider.
#[derive(Clone, Debug)]
pub struct PgmqSettings {
    pub database_url: SecretUrl,
    /// Connections in the pool (the listener holds one more).
    pub pool_size: u32,
    /// Install pgmq's SQL when the database has neither the extension nor the SQL.
    pub install_sql: bool,
    pub default_max_receive_count: u32,
    pub dead_letter_suffix: String,
    pub max_payload_bytes: usize,
    pub resource_validation: ResourceValidationConfig,
}

impl PgmqSettings {
    /// Defaults of [`MessagingConfig`] with this database.
    pub fn new(database_url: SecretUrl) -> Self {
        let config = MessagingConfig::default();
        PgmqSettings {
            database_url,
            pool_size: 8,
            install_sql: false,
            default_max_receive_count: config.queues.max_receive_count,
            dead_letter_suffix: config.queues.dead_letter_queue_suffix,
            max_payload_bytes: config.queues.max_payload_bytes,
            resource_validation: config.resource_validation,
        }
    }

    pub fn from_config(config: &MessagingConfig) -> Result<Self> {
        let pgmq = config.connection.pgmq.as_ref().ok_or_else(|| {
            MessagingError::config(
                "connection.pgmq.database_url",
                "required when provider = pgmq (or set DATABASE_URL)",
            )
        })?;
        Ok(PgmqSettings {
            database_url: pgmq.database_url.clone(),
            pool_size: pgmq.pool_size,
            install_sql: pgmq.install_sql,
            default_max_receive_count: config.queues.max_receive_count,
            dead_letter_suffix: config.queues.dead_letter_queue_suffix.clone(),
            max_payload_bytes: config.queues.max_payload_bytes,
            resource_validation: config.resource_validation.clone(),
        })
    }

    pub fn with_pool_size(mut self, pool_size: u32) -> Self {
        self.pool_size = pool_size;
        self
    }

    pub fn with_install_sql(mut self, install_sql: bool) -> Self {
        self.install_sql = install_sql;
        self
    }
}

/// What we know about one queue: its dead-letter queue, limit and statements.
struct QueueMeta {
    dead_letter_queue: Option<QueueName>,
    max_receive_count: u32,
    /// Part of every receipt, so a receipt of another queue is refused, not misapplied.
    tag: u32,
    sql: QueueSql,
}

struct Running {
    pool: PgPool,
    stop: watch::Sender<bool>,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The PGMQ `MessagingService`.
pub struct PgmqMessageService {
    settings: PgmqSettings,
    capabilities: Capabilities,
    options: PgConnectOptions,
    listener_name: String,
    running: std::sync::OnceLock<Running>,
    init_lock: tokio::sync::Mutex<()>,
    queues: RwLock<HashMap<QueueName, Arc<QueueMeta>>>,
    wakeups: Arc<Wakeups>,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for PgmqMessageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgmqMessageService")
            .field("database_url", &self.settings.database_url)
            .field("pool_size", &self.settings.pool_size)
            .field("queues", &self.queues.read().len())
            .finish()
    }
}

/// Maps a sqlx error to ours: connection trouble is retryable, a missing table is a missing
/// queue, and nothing carries the URL's password.
pub(crate) fn map_sqlx(
    e: sqlx::Error,
    operation: &'static str,
    queue: Option<&QueueName>,
    url: &SecretUrl,
) -> MessagingError {
    let provider = ProviderKind::Pgmq;
    let message = scrub(&e.to_string(), url);
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if code == "42P01" {
                if let Some(q) = queue {
                    return MessagingError::queue_not_found(q.as_str());
                }
            }
            // Connection exceptions, operator intervention, resources, serialization and
            // deadlock, lock not available: the same call may work later.
            let retryable = code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "40001"
                || code == "40P01"
                || code == "55P03";
            MessagingError::Provider {
                provider,
                operation,
                message,
                retryable,
            }
        }
        sqlx::Error::PoolTimedOut => MessagingError::Timeout {
            operation,
            after: Duration::from_secs(10),
        },
        sqlx::Error::PoolClosed => {
            MessagingError::NotInitialized("pgmq service was shut down".into())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => MessagingError::Connection { provider, message },
        sqlx::Error::Configuration(_) => {
            MessagingError::config("connection.pgmq.database_url", message)
        }
        _ => MessagingError::Provider {
            provider,
            operation,
            message,
            retryable: false,
        },
    }
}

fn duration_ms(d: Duration) -> i64 {
    // Rounded up: a lease is never shorter than asked.
    let ms = d.as_nanos().div_ceil(1_000_000);
    i64::try_from(ms).unwrap_or(i64::MAX).min(MAX_TIMER_MS)
}

fn queue_tag(queue: &QueueName) -> u32 {
    // Stable across processes and versions (receipts cross process boundaries).
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, queue.as_str().as_bytes());
    (id.as_u128() >> 96) as u32
}

/// How a payload is stored (see the module docs): body, kind, and for compact JSON the key
/// order that rebuilds it. Text bodies borrow the payload (bound as is, never copied).
fn classify(payload: &[u8]) -> (Cow<'_, str>, i16, Option<String>) {
    match std::str::from_utf8(payload) {
        // jsonb refuses \u0000 and PostgreSQL text refuses NUL: those go as base64.
        Ok(text) if !text.contains('\0') => {
            if text.contains("\\u0000") {
                return (Cow::Borrowed(text), KIND_TEXT, None);
            }
            if let Some(order) = codec::compact_key_order(text) {
                return (Cow::Borrowed(text), KIND_COMPACT, Some(order));
            }
            let is_json = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            (
                Cow::Borrowed(text),
                if is_json { KIND_JSON } else { KIND_TEXT },
                None,
            )
        }
        _ => (
            Cow::Owned(base64::engine::general_purpose::STANDARD.encode(payload)),
            KIND_BASE64,
            None,
        ),
    }
}

/// A batch ready to bind: one array per column, borrowing the messages' payloads.
#[derive(Default)]
struct Encoded<'a> {
    bodies: Vec<Cow<'a, str>>,
    kinds: Vec<i16>,
    ids: Vec<Uuid>,
    correlation_ids: Vec<Option<Uuid>>,
    delays_ms: Vec<i64>,
    key_orders: Vec<Option<String>>,
}

/// A leased row we could not turn into a message.
struct Undecodable {
    msg_id: i64,
    read_ct: i32,
    error: String,
}

/// What a row's headers say, for the rows that have any (most of ours have none): written
/// by another client, a dead-lettered or redriven message, a payload stored as text, base64
/// or an exact copy, or a row from before the id columns (ids and key order as headers).
#[derive(Default)]
struct HeaderFields {
    encoding: Option<String>,
    exact_payload: Option<String>,
    key_order: Option<String>,
    message_id: Option<Uuid>,
    correlation_id: Option<Uuid>,
    origin: Option<(String, String)>,
    dead_letter: Option<serde_json::Value>,
}

impl HeaderFields {
    /// Headers that are not a JSON object (another client may write anything) say nothing.
    fn parse(text: &str) -> Self {
        let Ok(serde_json::Value::Object(mut h)) = serde_json::from_str(text) else {
            return HeaderFields::default();
        };
        let mut take_str = |key: &str| match h.remove(key) {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        };
        let encoding = take_str("tasker_payload_encoding");
        let exact_payload = take_str("tasker_payload");
        let key_order = take_str("tasker_key_order");
        let message_id = take_str("tasker_message_id").and_then(|s| Uuid::from_str(&s).ok());
        let correlation_id =
            take_str("tasker_correlation_id").and_then(|s| Uuid::from_str(&s).ok());
        // ->> in SQL: strings unquoted, numbers as written.
        let scalar = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let origin = match h.get("tasker_origin") {
            Some(serde_json::Value::Array(a)) if a.len() >= 2 => scalar(&a[0]).zip(scalar(&a[1])),
            _ => None,
        };
        HeaderFields {
            encoding,
            exact_payload,
            key_order,
            message_id,
            correlation_id,
            origin,
            dead_letter: h.remove("tasker_dead_letter"),
        }
    }
}

/// Columns of [`QueueSql::receive`].
mod col {
    pub const MSG_ID: usize = 0;
    pub const READ_CT: usize = 1;
    pub const ENQUEUED_AT: usize = 2;
    pub const VT: usize = 3;
    pub const MESSAGE: usize = 4;
    pub const HEADERS: usize = 5;
    pub const MESSAGE_ID: usize = 6;
    pub const CORRELATION_ID: usize = 7;
    pub const KEY_ORDER: usize = 8;
    pub const OVER: usize = 9;
}

fn decode_row(
    queue: &QueueName,
    tag: u32,
    row: &PgRow,
    msg_id: i64,
) -> std::result::Result<ReceivedMessage, Undecodable> {
    let read_ct: i32 = row.try_get(col::READ_CT).unwrap_or_default();
    let undecodable = |error: String| Undecodable {
        msg_id,
        read_ct,
        error,
    };
    let column = |e: sqlx::Error| undecodable(format!("bad column: {e}"));
    let enqueued_at: DateTime<Utc> = row.try_get(col::ENQUEUED_AT).map_err(column)?;
    let vt: DateTime<Utc> = row.try_get(col::VT).map_err(column)?;
    // Text borrowed from the row: one allocation per message (the payload).
    let message: Option<&str> = row.try_get(col::MESSAGE).map_err(column)?;
    let headers: Option<&str> = row.try_get(col::HEADERS).map_err(column)?;
    let id_column: Option<Uuid> = row.try_get(col::MESSAGE_ID).map_err(column)?;
    let correlation_column: Option<Uuid> = row.try_get(col::CORRELATION_ID).map_err(column)?;
    let key_order_column: Option<&str> = row.try_get(col::KEY_ORDER).map_err(column)?;
    let h = headers.map(HeaderFields::parse).unwrap_or_default();

    // jsonb's text of the document; NULL only if another client stored SQL NULL.
    let text = message.unwrap_or("null");
    let json_string = |what: &str| {
        serde_json::from_str::<String>(text)
            .map_err(|e| undecodable(format!("{what} payload is not a JSON string: {e}")))
    };
    let payload = match h.encoding.as_deref() {
        None => match (
            &h.exact_payload,
            key_order_column.or(h.key_order.as_deref()),
        ) {
            (Some(exact), _) => Bytes::copy_from_slice(exact.as_bytes()),
            (None, Some(order)) => codec::rebuild_compact(text, Some(order))
                .map(Bytes::from)
                .map_err(|e| undecodable(format!("cannot rebuild the payload: {e}")))?,
            (None, None) => Bytes::copy_from_slice(text.as_bytes()),
        },
        Some("text") => Bytes::from(json_string("text")?),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(json_string("base64")?.as_bytes())
            .map(Bytes::from)
            .map_err(|e| undecodable(format!("payload is not valid base64: {e}")))?,
        Some(other) => {
            return Err(undecodable(format!(
                "unknown tasker_payload_encoding {other:?}"
            )));
        }
    };
    let message_id = match id_column.or(h.message_id) {
        Some(id) => MessageId(id),
        None => match &h.origin {
            Some((origin_queue, origin_id)) => MessageId::derived(origin_queue, origin_id),
            None => MessageId::derived(queue.as_str(), &msg_id.to_string()),
        },
    };
    let correlation_id = correlation_column.or(h.correlation_id).map(CorrelationId);
    let dead_letter = h
        .dead_letter
        .and_then(|value| match serde_json::from_value::<DeadLetterInfo>(value) {
            Ok(info) => Some(Box::new(info)),
            Err(e) => {
                tracing::warn!(queue = %queue, msg_id, error = %e, "ignoring a malformed tasker_dead_letter header");
                None
            }
        });
    Ok(ReceivedMessage {
        payload,
        metadata: QueuedMessageMetadata {
            message_id,
            correlation_id,
            receipt_handle: ReceiptHandle::from_pair(
                msg_id as u64,
                (u64::from(tag) << 32) | u64::from(read_ct as u32),
            ),
            enqueued_at,
            receive_count: read_ct.max(0) as u32,
            visibility_timeout_expires: Some(vt),
            dead_letter,
        },
    })
}

/// Serializes creating and dropping one queue between processes, for the transaction.
async fn lock_queue_ddl(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    queue: &QueueName,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('tasker_messaging.create'), hashtext($1))")
        .bind(queue.as_str())
        .execute(&mut **tx)
        .await
        .map(|_| ())
}

impl PgmqMessageService {
    /// A service for `settings`; connects in [`MessagingService::initialize`].
    pub fn new(settings: PgmqSettings) -> Result<Self> {
        let options = PgConnectOptions::from_str(settings.database_url.expose())
            .map_err(|e| {
                MessagingError::config(
                    "connection.pgmq.database_url",
                    scrub(&e.to_string(), &settings.database_url),
                )
            })?
            // One prepared statement per queue and operation; keep them all.
            .statement_cache_capacity(1024)
            .application_name("tasker_messaging");
        let capabilities = Capabilities {
            delayed_send: true,
            lease_extension: true,
            dead_letter_queues: true,
            native_dead_letter: false,
            fifo_order: true,
            exchange_routing: false,
            push_consumer: false,
            transactional_send: true,
            receipt_fencing: true,
            detailed_stats: true,
            wakeup_notifications: true,
            durable_leases: true,
            pgmq_extensions: true,
            max_payload_bytes: settings.max_payload_bytes,
            max_batch_size: MAX_BATCH,
            timer_resolution: Duration::from_millis(1),
        };
        let listener_name = format!("tasker_messaging_listener_{:08x}", rand::random::<u32>());
        Ok(PgmqMessageService {
            settings,
            capabilities,
            options,
            listener_name,
            running: std::sync::OnceLock::new(),
            init_lock: tokio::sync::Mutex::new(()),
            queues: RwLock::new(HashMap::new()),
            wakeups: Arc::new(Wakeups::default()),
            shut_down: AtomicBool::new(false),
        })
    }

    /// Builds and initializes a service.
    pub async fn connect(settings: PgmqSettings) -> Result<Self> {
        let service = Self::new(settings)?;
        service.initialize().await?;
        Ok(service)
    }

    pub fn settings(&self) -> &PgmqSettings {
        &self.settings
    }

    /// The connection pool, to begin transactions for [`Self::send_in_transaction`].
    pub fn pool(&self) -> Result<&PgPool> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(MessagingError::NotInitialized(
                "pgmq service was shut down".into(),
            ));
        }
        self.running
            .get()
            .map(|r| &r.pool)
            .ok_or_else(|| MessagingError::NotInitialized("call initialize() first".into()))
    }

    /// Whether the notification listener is connected now.
    pub fn listener_connected(&self) -> bool {
        self.wakeups.is_connected()
    }

    /// The listener connection's backend pid, when connected.
    pub fn listener_backend_pid(&self) -> Option<i32> {
        self.wakeups.backend_pid()
    }

    /// How many times the listener has connected (more than 1 after a reconnect).
    pub fn listener_connections(&self) -> u64 {
        self.wakeups.connections()
    }

    /// What the database at `url` has of pgmq.
    pub async fn detect_installation(url: &SecretUrl) -> Result<PgmqInstallation> {
        use sqlx::Connection;
        let options = PgConnectOptions::from_str(url.expose()).map_err(|e| {
            MessagingError::config("connection.pgmq.database_url", scrub(&e.to_string(), url))
        })?;
        let mut conn = sqlx::PgConnection::connect_with(&options)
            .await
            .map_err(|e| map_sqlx(e, "connect", None, url))?;
        let result = install::detect(&mut conn)
            .await
            .map_err(|e| map_sqlx(e, "detect pgmq", None, url));
        let _ = conn.close().await;
        result
    }

    /// Installs pgmq's embedded SQL into the database at `url` unless the extension or the SQL
    /// is already there (`tasker-mq pgmq install`). Offline; safe to run concurrently.
    pub async fn install_sql(url: &SecretUrl) -> Result<InstallOutcome> {
        let options = PgConnectOptions::from_str(url.expose()).map_err(|e| {
            MessagingError::config("connection.pgmq.database_url", scrub(&e.to_string(), url))
        })?;
        install::install_with_lock(&options, url).await
    }

    /// The server's connection limits (`max_connections`, reserved connections), for
    /// [`crate::build_service_with_limits`].
    pub async fn system_limits(url: &SecretUrl) -> Result<SystemResourceLimits> {
        use sqlx::Connection;
        let options = PgConnectOptions::from_str(url.expose()).map_err(|e| {
            MessagingError::config("connection.pgmq.database_url", scrub(&e.to_string(), url))
        })?;
        let mut conn = sqlx::PgConnection::connect_with(&options)
            .await
            .map_err(|e| map_sqlx(e, "connect", None, url))?;
        let limits = install::read_limits(&mut conn)
            .await
            .map_err(|e| map_sqlx(e, "read limits", None, url));
        let _ = conn.close().await;
        limits
    }

    fn err(
        &self,
        e: sqlx::Error,
        operation: &'static str,
        queue: Option<&QueueName>,
    ) -> MessagingError {
        let mapped = map_sqlx(e, operation, queue, &self.settings.database_url);
        if let (MessagingError::QueueNotFound { .. }, Some(q)) = (&mapped, queue) {
            self.queues.write().remove(q);
        }
        mapped
    }

    fn check_payload(&self, size: usize) -> Result<()> {
        if size > self.settings.max_payload_bytes {
            return Err(MessagingError::PayloadTooLarge {
                size,
                max: self.settings.max_payload_bytes,
            });
        }
        Ok(())
    }

    fn encode<'a>(&self, messages: &'a [OutgoingMessage]) -> Result<Encoded<'a>> {
        let n = messages.len();
        let mut out = Encoded {
            bodies: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            correlation_ids: Vec::with_capacity(n),
            delays_ms: Vec::with_capacity(n),
            key_orders: Vec::with_capacity(n),
        };
        for m in messages {
            self.check_payload(m.payload.len())?;
            let (body, kind, key_order) = classify(&m.payload);
            out.bodies.push(body);
            out.kinds.push(kind);
            out.key_orders.push(key_order);
            out.ids.push(m.message_id.0);
            out.correlation_ids.push(m.correlation_id.map(|c| c.0));
            out.delays_ms.push(duration_ms(m.delay));
        }
        Ok(out)
    }

    fn dead_letter_name(&self, queue: &QueueName) -> Option<QueueName> {
        queue.dead_letter(&self.settings.dead_letter_suffix).ok()
    }

    /// The queue's metadata, from the cache or the database (one query on first use).
    async fn meta(&self, queue: &QueueName) -> Result<Arc<QueueMeta>> {
        if let Some(meta) = self.queues.read().get(queue) {
            return Ok(meta.clone());
        }
        let pool = self.pool()?;
        let dlq = self.dead_letter_name(queue);
        let (exists, registered, dlq_exists): (bool, Option<i32>, bool) = sqlx::query_as(
            "SELECT to_regclass('pgmq.q_' || $1) IS NOT NULL,
                    (SELECT max_receive_count FROM tasker_messaging.queues WHERE queue_name = $1),
                    $2::text IS NOT NULL AND to_regclass('pgmq.q_' || $2) IS NOT NULL",
        )
        .bind(queue.as_str())
        .bind(dlq.as_ref().map(|d| d.as_str()))
        .fetch_one(pool)
        .await
        .map_err(|e| self.err(e, "queue lookup", Some(queue)))?;
        if !exists {
            return Err(MessagingError::queue_not_found(queue.as_str()));
        }
        // Our columns and wakeup trigger, on a queue another client created or an older
        // version of this provider did (a catalog check when they are there already).
        sqlx::query(
            "SELECT tasker_messaging.adopt_queue(n) FROM unnest(ARRAY[$1, $2]::text[]) n
             WHERE to_regclass('pgmq.q_' || n) IS NOT NULL",
        )
        .bind(queue.as_str())
        .bind(dlq.as_ref().map(|d| d.as_str()))
        .execute(pool)
        .await
        .map_err(|e| self.err(e, "queue lookup", Some(queue)))?;
        // A queue created by another client (plain pgmq.create) has no limit of ours.
        let max_receive_count = registered.map_or(0, |n| n.max(0) as u32);
        let dead_letter_queue = match dlq {
            Some(d) if dlq_exists => Some(d),
            Some(d) if max_receive_count > 0 => {
                // Ours, with its dead-letter queue dropped behind our back: recreate it.
                self.create_tables(&d, None).await?;
                Some(d)
            }
            _ => None,
        };
        let meta = Arc::new(QueueMeta {
            sql: QueueSql::new(queue, dead_letter_queue.as_ref(), max_receive_count > 0),
            dead_letter_queue,
            max_receive_count,
            tag: queue_tag(queue),
        });
        self.queues.write().insert(queue.clone(), meta.clone());
        Ok(meta)
    }

    /// Creates the pgmq queue (and registers it) in one transaction, with its trigger.
    async fn create_tables(
        &self,
        queue: &QueueName,
        register: Option<(u32, Option<&QueueName>)>,
    ) -> Result<()> {
        let pool = self.pool()?;
        let e = |e| self.err(e, "create queue", None);
        let mut tx = pool.begin().await.map_err(e)?;
        lock_queue_ddl(&mut tx, queue).await.map_err(e)?;
        sqlx::query("SELECT pgmq.create($1)")
            .bind(queue.as_str())
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        sqlx::query("SELECT tasker_messaging.adopt_queue($1)")
            .bind(queue.as_str())
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        if let Some((max_receive_count, dlq)) = register {
            sqlx::query(
                "INSERT INTO tasker_messaging.queues (queue_name, max_receive_count, dead_letter_queue)
                 VALUES ($1, $2, $3) ON CONFLICT (queue_name) DO NOTHING",
            )
            .bind(queue.as_str())
            .bind(i32::try_from(max_receive_count).unwrap_or(i32::MAX))
            .bind(dlq.map(|d| d.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        }
        tx.commit().await.map_err(e)
    }

    /// The dead-letter queue of `queue`, created if missing (explicit dead-lettering on a
    /// queue created without one, or by another client).
    async fn ensure_dead_letter_queue(
        &self,
        queue: &QueueName,
        meta: Arc<QueueMeta>,
    ) -> Result<Arc<QueueMeta>> {
        if meta.dead_letter_queue.is_some() {
            return Ok(meta);
        }
        let dlq = queue.dead_letter(&self.settings.dead_letter_suffix)?;
        self.create_tables(&dlq, Some((0, None))).await?;
        self.queues.write().remove(queue);
        self.meta(queue).await
    }

    async fn send_on<'c, E>(
        &self,
        executor: E,
        queue: &QueueName,
        meta: &QueueMeta,
        batch: Encoded<'_>,
    ) -> Result<usize>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
    {
        let ids: Vec<i64> = sqlx::query_scalar(&meta.sql.send)
            .bind(batch.bodies)
            .bind(batch.kinds)
            .bind(batch.ids)
            .bind(batch.correlation_ids)
            .bind(batch.delays_ms)
            .bind(queue.as_str())
            .bind(batch.key_orders)
            .fetch_all(executor)
            .await
            .map_err(|e| self.err(e, "send", Some(queue)))?;
        Ok(ids.len())
    }

    /// Sends inside the caller's transaction: the message exists only if the transaction
    /// commits, together with whatever else it changed.
    pub async fn send_in_transaction(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        queue: &QueueName,
        message: OutgoingMessage,
    ) -> Result<MessageId> {
        let id = message.message_id;
        self.send_batch_in_transaction(tx, queue, vec![message])
            .await?;
        Ok(id)
    }

    /// `send_batch` inside the caller's transaction (one statement).
    pub async fn send_batch_in_transaction(
        &self,
        tx: &mut sqlx::Transaction<'_, Postgres>,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        let batch = self.encode(&messages)?;
        let meta = self.meta(queue).await?;
        let ids = messages.iter().map(|m| m.message_id).collect();
        if !messages.is_empty() {
            let conn = tx
                .acquire()
                .await
                .map_err(|e| self.err(e, "send", Some(queue)))?;
            self.send_on(conn, queue, &meta, batch).await?;
        }
        Ok(ids)
    }

    fn receipt_parts(
        &self,
        queue: &QueueName,
        meta: &QueueMeta,
        receipt: &ReceiptHandle,
    ) -> Result<(i64, i32)> {
        let bad = |why: &str| MessagingError::invalid_receipt(queue.as_str(), why);
        let (msg_id, lease) = receipt.as_pair().ok_or_else(|| bad("not a pgmq receipt"))?;
        if (lease >> 32) as u32 != meta.tag {
            return Err(bad("the receipt belongs to another queue"));
        }
        let msg_id = i64::try_from(msg_id).map_err(|_| bad("message id out of range"))?;
        let read_ct = (lease & 0xffff_ffff) as u32;
        let read_ct = i32::try_from(read_ct).map_err(|_| bad("receive count out of range"))?;
        if read_ct == 0 {
            return Err(bad("not a lease"));
        }
        Ok((msg_id, read_ct))
    }

    fn lease_error(queue: &QueueName, current_ct: Option<i32>) -> MessagingError {
        match current_ct {
            None => MessagingError::invalid_receipt(queue.as_str(), "the message no longer exists"),
            Some(_) => MessagingError::invalid_receipt(
                queue.as_str(),
                "the lease ended and the message was received again",
            ),
        }
    }

    async fn receive_inner(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        let meta = self.meta(queue).await?;
        if max_messages == 0 {
            return Ok(Vec::new());
        }
        let pool = self.pool()?;
        let limit = max_messages.min(MAX_BATCH) as i64;
        let max_receive_count = match (&meta.sql.dead_letter_over, meta.max_receive_count) {
            (Some(_), n) => i32::try_from(n).unwrap_or(i32::MAX),
            (None, _) => 0,
        };
        let rows = sqlx::query(&meta.sql.receive)
            .bind(limit)
            .bind(duration_ms(visibility_timeout))
            .bind(max_receive_count)
            .fetch_all(pool)
            .await
            .map_err(|e| self.err(e, "receive", Some(queue)))?;
        let mut out = Vec::with_capacity(rows.len());
        let mut bad = Vec::new();
        let mut over: i64 = 0;
        for row in &rows {
            over = row.try_get::<i64, _>(col::OVER).unwrap_or(0);
            // The one row of a receive that leased nothing.
            let Ok(Some(msg_id)) = row.try_get::<Option<i64>, _>(col::MSG_ID) else {
                continue;
            };
            match decode_row(queue, meta.tag, row, msg_id) {
                Ok(m) => out.push(m),
                Err(u) => bad.push(u),
            }
        }
        if over > 0 {
            // The leased messages are returned either way; what is not moved now is found
            // again, still over its limit, by the next receive.
            if let Err(e) = self
                .dead_letter_over(queue, &meta, max_receive_count, over)
                .await
            {
                tracing::warn!(queue = %queue, error = %e, "could not dead-letter messages over max_receive_count");
            }
        }
        for u in bad {
            // Never dropped, never returned as garbage: moved to the dead-letter queue with the
            // reason. A queue without one (a dead-letter queue itself) keeps the row leased:
            // it comes back when the lease ends, for a person to look at with plain SQL.
            if meta.dead_letter_queue.is_none() {
                tracing::warn!(queue = %queue, msg_id = u.msg_id, error = %u.error, "undecodable pgmq row left in place (no dead-letter queue)");
                continue;
            }
            tracing::warn!(queue = %queue, msg_id = u.msg_id, error = %u.error, "dead-lettering an undecodable pgmq row");
            let reason = DeadLetterReason::Undecodable { error: u.error };
            if let Err(e) = self
                .dead_letter_raw(queue, meta.clone(), u.msg_id, u.read_ct, &reason)
                .await
            {
                tracing::warn!(queue = %queue, msg_id = u.msg_id, error = %e, "could not dead-letter an undecodable row");
            }
        }
        Ok(out)
    }

    /// Moves the messages a receive found over their receive limit to the dead-letter queue.
    async fn dead_letter_over(
        &self,
        queue: &QueueName,
        meta: &QueueMeta,
        max_receive_count: i32,
        seen: i64,
    ) -> Result<()> {
        let (Some(statement), Some(dlq)) = (
            meta.sql.dead_letter_over.as_deref(),
            &meta.dead_letter_queue,
        ) else {
            return Ok(());
        };
        let (moved, _woke): (i64, i64) = sqlx::query_as(statement)
            .bind(max_receive_count)
            .bind(seen)
            .bind(queue.as_str())
            .bind(dlq.as_str())
            .fetch_one(self.pool()?)
            .await
            .map_err(|e| self.err(e, "dead-letter", Some(queue)))?;
        tracing::debug!(queue = %queue, moved, "dead-lettered messages over max_receive_count");
        Ok(())
    }

    async fn start(&self) -> Result<Running> {
        install::prepare(
            &self.settings,
            &self.options,
            self.resource_requirements().db_connections,
        )
        .await?;
        let pool = PgPoolOptions::new()
            .max_connections(self.settings.pool_size)
            .acquire_timeout(Duration::from_secs(10))
            // Our statements are prepared once per connection and their generic plans are
            // the right ones (index scans bounded by the LIMIT). Left to itself PostgreSQL
            // compares them with custom plans that know the LIMIT, finds those cheaper on a
            // long queue and re-plans every receive (0.2 ms of a 1.5 ms receive).
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(conn, "SET plan_cache_mode = force_generic_plan")
                        .await
                        .map(|_| ())
                })
            })
            .connect_lazy_with(self.options.clone());
        let (stop, stop_rx) = watch::channel(false);
        let handle = listener::spawn(
            self.options.clone().application_name(&self.listener_name),
            self.wakeups.clone(),
            stop_rx,
        );
        // Wakeups are declared: give the listener a moment to be there from the start. If it
        // cannot connect, consumers poll until it can.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.wakeups.is_connected() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Running {
            pool,
            stop,
            listener: Mutex::new(Some(handle)),
        })
    }

    async fn dead_letter_raw(
        &self,
        queue: &QueueName,
        meta: Arc<QueueMeta>,
        msg_id: i64,
        read_ct: i32,
        reason: &DeadLetterReason,
    ) -> Result<()> {
        let meta = self.ensure_dead_letter_queue(queue, meta).await?;
        let Some(statement) = meta.sql.dead_letter.as_deref() else {
            return Err(MessagingError::queue_not_found(&format!(
                "{queue}{}",
                self.settings.dead_letter_suffix
            )));
        };
        let reason = serde_json::to_value(reason).map_err(|e| MessagingError::Serialization {
            direction: crate::error::SerdeDirection::Encode,
            type_name: "DeadLetterReason",
            message: e.to_string(),
        })?;
        let (moved, _woke, current_ct): (i64, i64, Option<i32>) = sqlx::query_as(statement)
            .bind(msg_id)
            .bind(read_ct)
            .bind(queue.as_str())
            .bind(sqlx::types::Json(reason))
            .bind(meta.dead_letter_queue.as_ref().map(|d| d.as_str()))
            .fetch_one(self.pool()?)
            .await
            .map_err(|e| self.err(e, "dead-letter", Some(queue)))?;
        if moved == 1 {
            Ok(())
        } else {
            Err(Self::lease_error(queue, current_ct))
        }
    }
}

#[async_trait]
impl MessagingService for PgmqMessageService {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Pgmq
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn resource_requirements(&self) -> ResourceRequirements {
        ResourceRequirements {
            // The pool plus the listener's own connection.
            db_connections: self.settings.pool_size + 1,
            memory_mb: 0,
        }
    }

    async fn initialize(&self) -> Result<()> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(MessagingError::NotInitialized(
                "pgmq service was shut down".into(),
            ));
        }
        let _guard = self.init_lock.lock().await;
        if self.running.get().is_some() {
            return Ok(());
        }
        let running = self.start().await?;
        let _ = self.running.set(running);
        Ok(())
    }

    async fn health_check(&self) -> Result<MessagingHealth> {
        if self.shut_down.load(Ordering::Acquire) {
            return Ok(MessagingHealth::Unhealthy {
                error: "shut down".into(),
            });
        }
        let Some(running) = self.running.get() else {
            return Ok(MessagingHealth::Unhealthy {
                error: "not initialized".into(),
            });
        };
        if let Err(e) = sqlx::query("SELECT 1").execute(&running.pool).await {
            return Ok(MessagingHealth::Unhealthy {
                error: self.err(e, "health check", None).to_string(),
            });
        }
        if !self.wakeups.is_connected() {
            return Ok(MessagingHealth::Degraded {
                reason: "notification listener is reconnecting; consumers poll meanwhile".into(),
            });
        }
        // Depth of the queues this service uses, one short statement each: counting every
        // queue in one transaction would hold locks a concurrent drop_queue needs (deadlock).
        let known: Vec<QueueName> = self.queues.read().keys().cloned().collect();
        let (mut depth, mut in_flight) = (0u64, 0u64);
        for queue in known {
            match self.get_queue_stats(&queue).await {
                Ok(stats) => {
                    depth += stats.message_count + stats.delayed_count.unwrap_or(0);
                    in_flight += stats.in_flight_count.unwrap_or(0);
                }
                Err(MessagingError::QueueNotFound { .. }) => {}
                Err(e) if e.is_retryable() => {
                    return Ok(MessagingHealth::Unhealthy {
                        error: e.to_string(),
                    })
                }
                Err(e) => {
                    return Ok(MessagingHealth::Degraded {
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(MessagingHealth::Healthy {
            queue_depth: depth,
            in_flight,
        })
    }

    async fn shutdown(&self) -> Result<()> {
        self.shut_down.store(true, Ordering::Release);
        if let Some(running) = self.running.get() {
            let _ = running.stop.send(true);
            let handle = running.listener.lock().take();
            if let Some(handle) = handle {
                let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
            }
            running.pool.close().await;
        }
        self.wakeups.wake_all();
        Ok(())
    }

    async fn create_queue_with(&self, queue: &QueueName, options: &QueueOptions) -> Result<()> {
        self.pool()?;
        let max = options
            .max_receive_count
            .unwrap_or(self.settings.default_max_receive_count);
        let dlq = if max > 0 {
            Some(queue.dead_letter(&self.settings.dead_letter_suffix)?)
        } else {
            self.dead_letter_name(queue)
        };
        if let Some(d) = &dlq {
            self.create_tables(d, Some((0, None))).await?;
        }
        self.create_tables(queue, Some((max, dlq.as_ref()))).await?;
        self.queues.write().remove(queue);
        Ok(())
    }

    async fn send(&self, queue: &QueueName, message: OutgoingMessage) -> Result<MessageId> {
        let id = message.message_id;
        self.send_batch(queue, vec![message]).await?;
        Ok(id)
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<MessageId>> {
        if messages.len() > MAX_BATCH {
            return Err(MessagingError::Provider {
                provider: ProviderKind::Pgmq,
                operation: "send",
                message: format!("batch of {} exceeds {MAX_BATCH}", messages.len()),
                retryable: false,
            });
        }
        let batch = self.encode(&messages)?;
        let meta = self.meta(queue).await?;
        let ids = messages.iter().map(|m| m.message_id).collect();
        if !messages.is_empty() {
            self.send_on(self.pool()?, queue, &meta, batch).await?;
        }
        Ok(ids)
    }

    async fn receive(
        &self,
        queue: &QueueName,
        max_messages: usize,
        visibility_timeout: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        self.receive_inner(queue, max_messages, visibility_timeout)
            .await
    }

    async fn delete_message(&self, queue: &QueueName, receipt: &ReceiptHandle) -> Result<()> {
        let mut outcome = self
            .delete_messages(queue, std::slice::from_ref(receipt))
            .await?;
        match outcome.rejected.pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    async fn delete_messages(
        &self,
        queue: &QueueName,
        receipts: &[ReceiptHandle],
    ) -> Result<DeleteOutcome> {
        let meta = self.meta(queue).await?;
        let mut outcome = DeleteOutcome::default();
        let mut ids = Vec::with_capacity(receipts.len());
        let mut counts = Vec::with_capacity(receipts.len());
        let mut valid = Vec::with_capacity(receipts.len());
        for receipt in receipts {
            match self.receipt_parts(queue, &meta, receipt) {
                Ok((id, ct)) => {
                    ids.push(id);
                    counts.push(ct);
                    valid.push(receipt);
                }
                Err(e) => outcome.rejected.push((receipt.clone(), e)),
            }
        }
        if ids.is_empty() {
            return Ok(outcome);
        }
        // The statement checks each id against its first receipt: a repeated id goes newest
        // receipt (highest read_ct) first. Receipts of one receive come in msg_id order, so
        // usually one pass proves there is no repeat and nothing is copied.
        let repeated = !ids.windows(2).all(|w| w[0] < w[1]) && {
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.windows(2).any(|w| w[0] == w[1])
        };
        let reordered: Option<(Vec<i64>, Vec<i32>)> = repeated.then(|| {
            let mut pairs: Vec<(i64, i32)> =
                ids.iter().copied().zip(counts.iter().copied()).collect();
            pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            pairs.into_iter().unzip()
        });
        let (bound_ids, bound_counts) = match &reordered {
            Some((i, c)) => (i.as_slice(), c.as_slice()),
            None => (ids.as_slice(), counts.as_slice()),
        };
        let rows: Vec<(i64, i32, Option<i32>)> = sqlx::query_as(&meta.sql.delete)
            .bind(bound_ids)
            .bind(bound_counts)
            .fetch_all(self.pool()?)
            .await
            .map_err(|e| self.err(e, "delete", Some(queue)))?;
        // Receipts whose message is still there under another lease.
        let stale: std::collections::HashSet<(i64, i32)> = rows
            .into_iter()
            .filter(|(_, _, current)| current.is_some())
            .map(|(id, ct, _)| (id, ct))
            .collect();
        for ((receipt, id), ct) in valid.into_iter().zip(ids).zip(counts) {
            if stale.contains(&(id, ct)) {
                outcome
                    .rejected
                    .push((receipt.clone(), Self::lease_error(queue, Some(0))));
            } else {
                // Deleted now, or already gone (idempotent).
                outcome.deleted += 1;
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
        let meta = self.meta(queue).await?;
        let (msg_id, read_ct) = self.receipt_parts(queue, &meta, receipt)?;
        let (updated, _notified, current_ct): (i64, i64, Option<i32>) =
            sqlx::query_as(&meta.sql.set_vt)
                .bind(msg_id)
                .bind(read_ct)
                .bind(duration_ms(visibility_timeout))
                .bind(queue.as_str())
                .fetch_one(self.pool()?)
                .await
                .map_err(|e| self.err(e, "change visibility", Some(queue)))?;
        if updated == 1 {
            Ok(())
        } else {
            Err(Self::lease_error(queue, current_ct))
        }
    }

    async fn dead_letter_message(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        reason: &str,
    ) -> Result<()> {
        let meta = self.meta(queue).await?;
        let (msg_id, read_ct) = self.receipt_parts(queue, &meta, receipt)?;
        let reason = DeadLetterReason::Rejected {
            reason: reason.to_owned(),
        };
        self.dead_letter_raw(queue, meta, msg_id, read_ct, &reason)
            .await
    }

    fn dead_letter_queue_name(&self, queue: &QueueName) -> Result<QueueName> {
        queue.dead_letter(&self.settings.dead_letter_suffix)
    }

    async fn redrive_dead_letters(&self, queue: &QueueName, max_messages: usize) -> Result<u64> {
        let meta = self.meta(queue).await?;
        let (Some(statement), Some(dlq)) = (meta.sql.redrive.as_deref(), &meta.dead_letter_queue)
        else {
            return Ok(0);
        };
        if max_messages == 0 {
            return Ok(0);
        }
        let (moved, _woke): (i64, i64) = sqlx::query_as(statement)
            .bind(max_messages.min(i64::MAX as usize) as i64)
            .bind(dlq.as_str())
            .bind(queue.as_str())
            .fetch_one(self.pool()?)
            .await
            .map_err(|e| self.err(e, "redrive", Some(queue)))?;
        Ok(moved.max(0) as u64)
    }

    async fn get_queue_stats(&self, queue: &QueueName) -> Result<QueueStats> {
        let meta = self.meta(queue).await?;
        let (visible, in_flight, delayed, oldest, dead): (i64, i64, i64, Option<f64>, Option<i64>) =
            sqlx::query_as(&meta.sql.stats)
                .fetch_one(self.pool()?)
                .await
                .map_err(|e| self.err(e, "stats", Some(queue)))?;
        Ok(QueueStats {
            queue_name: queue.clone(),
            message_count: visible.max(0) as u64,
            in_flight_count: Some(in_flight.max(0) as u64),
            delayed_count: Some(delayed.max(0) as u64),
            oldest_message_age_seconds: oldest.map(|s| s.max(0.0)),
            dead_letter_count: dead.map(|n| n.max(0) as u64),
        })
    }

    async fn purge_queue(&self, queue: &QueueName) -> Result<u64> {
        self.meta(queue).await?;
        let n: i64 = sqlx::query_scalar("SELECT pgmq.purge_queue($1)::int8")
            .bind(queue.as_str())
            .fetch_one(self.pool()?)
            .await
            .map_err(|e| self.err(e, "purge", Some(queue)))?;
        Ok(n.max(0) as u64)
    }

    async fn delete_queue(&self, queue: &QueueName) -> Result<()> {
        let pool = self.pool()?;
        let e = |e| self.err(e, "delete queue", Some(queue));
        let dlq = self.dead_letter_name(queue);
        let mut tx = pool.begin().await.map_err(e)?;
        lock_queue_ddl(&mut tx, queue).await.map_err(e)?;
        let existed: bool = sqlx::query_scalar(
            "SELECT CASE WHEN to_regclass('pgmq.q_' || $1) IS NULL THEN false
                         ELSE pgmq.drop_queue($1) END",
        )
        .bind(queue.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(e)?;
        if !existed {
            drop(tx);
            self.queues.write().remove(queue);
            return Err(MessagingError::queue_not_found(queue.as_str()));
        }
        if let Some(d) = &dlq {
            sqlx::query(
                "SELECT pgmq.drop_queue($1) WHERE to_regclass('pgmq.q_' || $1) IS NOT NULL",
            )
            .bind(d.as_str())
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        }
        sqlx::query("DELETE FROM tasker_messaging.queues WHERE queue_name = $1 OR queue_name = $2")
            .bind(queue.as_str())
            .bind(dlq.as_ref().map(|d| d.as_str()))
            .execute(&mut *tx)
            .await
            .map_err(e)?;
        tx.commit().await.map_err(e)?;
        let mut queues = self.queues.write();
        queues.remove(queue);
        if let Some(d) = &dlq {
            queues.remove(d);
        }
        drop(queues);
        self.wakeups.forget(queue.as_str());
        Ok(())
    }

    async fn wait_for_messages(&self, queue: &QueueName, max_wait: Duration) {
        if self.shut_down.load(Ordering::Acquire) || max_wait.is_zero() {
            return;
        }
        // Bounded either way: with the listener down this is the polling fallback.
        let notify = self.wakeups.notify_for(queue.as_str());
        let _ = tokio::time::timeout(max_wait, notify.notified()).await;
    }

    fn pgmq(&self) -> Option<&dyn PgmqExtensions> {
        Some(self)
    }
}

#[async_trait]
impl PgmqExtensions for PgmqMessageService {
    async fn create_queue_with_vt(&self, queue: &QueueName, vt: Duration) -> Result<()> {
        self.create_queue(queue).await?;
        let secs =
            i32::try_from(vt.as_secs() + u64::from(vt.subsec_nanos() > 0)).unwrap_or(i32::MAX);
        sqlx::query(
            "UPDATE tasker_messaging.queues SET default_vt_secs = $2 WHERE queue_name = $1",
        )
        .bind(queue.as_str())
        .bind(secs)
        .execute(self.pool()?)
        .await
        .map_err(|e| self.err(e, "create queue", Some(queue)))?;
        Ok(())
    }

    /// pgmq.read semantics (whole seconds, rounded up; zero takes the queue's default from
    /// `create_queue_with_vt`), with this provider's receipts and dead-lettering.
    async fn read_batch(
        &self,
        queue: &QueueName,
        vt: Duration,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>> {
        let mut secs = vt.as_secs() + u64::from(vt.subsec_nanos() > 0);
        if secs == 0 {
            let default: Option<i32> = sqlx::query_scalar(
                "SELECT default_vt_secs FROM tasker_messaging.queues WHERE queue_name = $1",
            )
            .bind(queue.as_str())
            .fetch_optional(self.pool()?)
            .await
            .map_err(|e| self.err(e, "read", Some(queue)))?
            .flatten();
            secs = default.map_or(0, |s| s.max(0) as u64);
        }
        self.receive_inner(queue, limit, Duration::from_secs(secs))
            .await
    }

    async fn archive_messages(&self, queue: &QueueName, msg_ids: &[i64]) -> Result<u64> {
        let meta = self.meta(queue).await?;
        // pgmq.archive's move, with our columns kept (pgmq.archive would drop the ids).
        let n: i64 = sqlx::query_scalar(&meta.sql.archive)
            .bind(msg_ids)
            .fetch_one(self.pool()?)
            .await
            .map_err(|e| self.err(e, "archive", Some(queue)))?;
        Ok(n.max(0) as u64)
    }

    async fn get_metrics(&self, queue: &QueueName) -> Result<serde_json::Value> {
        self.meta(queue).await?;
        let sqlx::types::Json(value): sqlx::types::Json<serde_json::Value> =
            sqlx::query_scalar("SELECT to_jsonb(m) FROM pgmq.metrics($1) m")
                .bind(queue.as_str())
                .fetch_one(self.pool()?)
                .await
                .map_err(|e| self.err(e, "metrics", Some(queue)))?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_kinds() {
        assert_eq!(classify(br#"{"a":1}"#).1, KIND_COMPACT);
        assert_eq!(classify(br#"{"a": 1}"#).1, KIND_JSON);
        assert_eq!(classify(b"plain text").1, KIND_TEXT);
        assert_eq!(classify(br#""\u0000""#).1, KIND_TEXT);
        assert_eq!(classify(&[0xff, 0x00, 0x01]).1, KIND_BASE64);
        assert_eq!(classify(b"nul\0inside").1, KIND_BASE64);
    }

    #[test]
    fn timers_round_up_to_milliseconds_and_stay_in_range() {
        assert_eq!(duration_ms(Duration::from_micros(1)), 1);
        assert_eq!(duration_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(duration_ms(Duration::MAX), MAX_TIMER_MS);
    }

    #[test]
    fn queue_tags_are_stable_and_distinct() {
        let a = QueueName::new("orders").unwrap();
        let b = QueueName::new("orders_dlq").unwrap();
        assert_eq!(queue_tag(&a), queue_tag(&a));
        assert_ne!(queue_tag(&a), queue_tag(&b));
    }
}
