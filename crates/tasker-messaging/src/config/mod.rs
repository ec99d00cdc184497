//! Configuration: the plan's `MessagingConfig`, read from TOML with environment overrides.
//!
//! Sources, later winning: defaults, the TOML file, the conventional variables (`DATABASE_URL`,
//! `AMQP_URL`, `REDIS_URL`, `NATS_URL`, `SQS_ENDPOINT_URL`, `KAFKA_BROKERS`), then `TASKER_MQ_*`
//! variables where `__` separates levels (`TASKER_MQ_QUEUES__MAX_RECEIVE_COUNT=3`).
//! Unknown keys are errors, so a typo never falls back to a default; every error names the key.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::error::MessagingError;
use crate::queue_name::QueueName;
use crate::secret::SecretUrl;
use crate::service::ProviderKind;

/// Everything the messaging layer is configured with.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagingConfig {
    pub provider: ProviderKind,
    pub connection: ConnectionConfig,
    pub queues: QueueConfig,
    pub retry_policy: RetryPolicy,
    pub circuit_breaker: CircuitBreakerConfig,
    pub resource_validation: ResourceValidationConfig,
    /// A secondary provider started when the configured one cannot start
    /// (see `resilience::fallback`).
    pub fallback: Option<FallbackConfig>,
    /// Global backpressure thresholds (see `resilience::backpressure`).
    pub backpressure: BackpressureConfig,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        MessagingConfig {
            provider: ProviderKind::InMemory,
            connection: ConnectionConfig::default(),
            queues: QueueConfig::default(),
            retry_policy: RetryPolicy::default(),
            circuit_breaker: CircuitBreakerConfig::default(),
            resource_validation: ResourceValidationConfig::default(),
            fallback: None,
            backpressure: BackpressureConfig::default(),
        }
    }
}

/// Connection settings, one section per provider; only the chosen provider's is required.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    pub in_memory: InMemoryConfig,
    pub pgmq: Option<PgmqConnectionConfig>,
    pub rabbitmq: Option<RabbitMqConnectionConfig>,
    pub sqs: Option<SqsConnectionConfig>,
    pub redis: Option<RedisConnectionConfig>,
    pub kafka: Option<KafkaConnectionConfig>,
    pub nats: Option<NatsConnectionConfig>,
}

impl ConnectionConfig {
    /// Connections the chosen provider holds, for resource validation (the plan's
    /// `required_connections`).
    pub fn required_connections(&self, provider: ProviderKind) -> u32 {
        match provider {
            ProviderKind::InMemory => 0,
            ProviderKind::Pgmq => self.pgmq.as_ref().map_or(0, |c| c.pool_size + 1),
            ProviderKind::Rabbitmq => 1,
            ProviderKind::Sqs => 10,
            ProviderKind::Redis => self.redis.as_ref().map_or(1, |c| c.pool_size),
            ProviderKind::Kafka => 5,
            ProviderKind::Nats => 1,
        }
    }
}

/// The embedded provider has nothing to connect to.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InMemoryConfig {}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgmqConnectionConfig {
    pub database_url: SecretUrl,
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// Install pgmq's SQL API when the database has neither the extension nor the SQL.
    #[serde(default)]
    pub install_sql: bool,
    /// Wait for a pooled connection before a retryable `Connection` error: short, so calls
    /// fail fast in a PostgreSQL outage and the breaker opens.
    #[serde(default = "default_pgmq_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
}

fn default_pgmq_acquire_timeout_ms() -> u64 {
    5_000
}

fn default_pool_size() -> u32 {
    8
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitMqConnectionConfig {
    pub url: SecretUrl,
    pub vhost: Option<String>,
    pub connection_timeout_ms: Option<u64>,
    pub heartbeat_interval_secs: Option<u64>,
    pub prefetch_count: Option<u16>,
    /// Queue type of new queues: `quorum` (default: replicated, counts deliveries, enforces
    /// the delivery limit itself) or `classic`.
    #[serde(default)]
    pub queue_type: Option<RabbitMqQueueType>,
    /// With an `amqps://` URL: PEM file of the certificate authorities to trust besides the
    /// system's (a private CA).
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// With an `amqps://` URL: client certificate (PEM) for brokers that require one; needs
    /// `tls_client_key_file`.
    #[serde(default)]
    pub tls_client_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_client_key_file: Option<std::path::PathBuf>,
}

/// The kind of queue the RabbitMQ provider declares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RabbitMqQueueType {
    #[default]
    Quorum,
    Classic,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConnectionConfig {
    pub endpoint_url: Option<SecretUrl>,
    #[serde(default = "default_region")]
    pub region: String,
    /// Every queue is a FIFO queue (`<name>.fifo`): send order kept, no per-message delay.
    #[serde(default)]
    pub fifo: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConnectionConfig {
    pub url: SecretUrl,
    #[serde(default = "default_redis_pool")]
    pub pool_size: u32,
}

fn default_redis_pool() -> u32 {
    4
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConnectionConfig {
    pub brokers: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConnectionConfig {
    pub url: SecretUrl,
    /// Replicas of each stream the NATS provider creates (3 on a three-node cluster).
    #[serde(default = "default_nats_replicas")]
    pub replicas: usize,
}

fn default_nats_replicas() -> usize {
    1
}

/// Queue naming and lifecycle defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// How a namespace maps to its queue; must contain `{namespace}` once.
    pub namespace_pattern: String,
    /// The namespaces workers serve.
    pub namespaces: Vec<String>,
    pub default_visibility_timeout_secs: u64,
    /// Receipts before a message is dead-lettered; 0 disables dead-lettering.
    pub max_receive_count: u32,
    pub dead_letter_queue_suffix: String,
    /// Largest payload accepted by `send` (providers may accept less).
    pub max_payload_bytes: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            namespace_pattern: "{namespace}_queue".into(),
            namespaces: vec!["default".into()],
            default_visibility_timeout_secs: 30,
            max_receive_count: 5,
            dead_letter_queue_suffix: "_dlq".into(),
            max_payload_bytes: 256 * 1024,
        }
    }
}

impl QueueConfig {
    pub fn default_visibility_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.default_visibility_timeout_secs)
    }
}

/// Retry policy for operations safe to repeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub backoff_multiplier: f64,
    /// Adds a random 0-100% of each delay, so clients that failed together spread out.
    pub jitter: bool,
    /// Retry `send` / `send_batch` too. A retried send whose first attempt landed duplicates
    /// the message under the same message id (consumers deduplicate by id).
    pub retry_sends: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 10_000,
            backoff_multiplier: 2.0,
            jitter: true,
            retry_sends: true,
        }
    }
}

/// Circuit breaker settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    pub failure_threshold: u32,
    pub success_threshold: u32,
    pub timeout_ms: u64,
    pub half_open_max_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_threshold: 5,
            success_threshold: 2,
            timeout_ms: 30_000,
            half_open_max_calls: 1,
        }
    }
}

/// Resource validation settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceValidationConfig {
    pub enforce_limits: bool,
    /// Share of the database's client connections this service may use, in percent.
    pub max_connection_percentage: f32,
    pub memory_per_queue_mb: u64,
}

impl Default for ResourceValidationConfig {
    fn default() -> Self {
        ResourceValidationConfig {
            enforce_limits: true,
            max_connection_percentage: 80.0,
            memory_per_queue_mb: 1,
        }
    }
}

/// The secondary provider (`[fallback]`); its connection comes from the same `[connection]`
/// section as the primary's (e.g. `[connection.pgmq]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    pub provider: ProviderKind,
}

/// Global backpressure: pressure is the highest of the four ratios (queue depth, in-flight,
/// error rate, latency against their maxima), clamped to 0..=1. A level is entered at or above
/// its `*_enter` threshold and left below its `*_exit` threshold, and no change happens less
/// than `min_dwell_ms` after the previous one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackpressureConfig {
    pub elevated_enter: f64,
    pub elevated_exit: f64,
    pub critical_enter: f64,
    pub critical_exit: f64,
    pub min_dwell_ms: u64,
    pub max_queue_depth: u64,
    pub max_in_flight: u64,
    pub max_error_rate: f64,
    pub max_latency_ms: u64,
    /// Share of the base batch size consumers use when elevated, and when critical.
    pub elevated_batch_factor: f64,
    pub critical_batch_factor: f64,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        BackpressureConfig {
            elevated_enter: 0.7,
            elevated_exit: 0.5,
            critical_enter: 0.9,
            critical_exit: 0.75,
            min_dwell_ms: 5_000,
            max_queue_depth: 10_000,
            max_in_flight: 1_000,
            max_error_rate: 0.5,
            max_latency_ms: 1_000,
            elevated_batch_factor: 0.5,
            critical_batch_factor: 0.1,
        }
    }
}

impl BackpressureConfig {
    fn validate(&self) -> Result<(), MessagingError> {
        for (key, value) in [
            ("backpressure.elevated_enter", self.elevated_enter),
            ("backpressure.elevated_exit", self.elevated_exit),
            ("backpressure.critical_enter", self.critical_enter),
            ("backpressure.critical_exit", self.critical_exit),
            (
                "backpressure.elevated_batch_factor",
                self.elevated_batch_factor,
            ),
            (
                "backpressure.critical_batch_factor",
                self.critical_batch_factor,
            ),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(MessagingError::config(
                    key,
                    format!("must be in [0, 1], got {value}"),
                ));
            }
        }
        for (key, exit, enter) in [
            (
                "backpressure.elevated_exit",
                self.elevated_exit,
                self.elevated_enter,
            ),
            (
                "backpressure.critical_exit",
                self.critical_exit,
                self.critical_enter,
            ),
        ] {
            if exit >= enter {
                return Err(MessagingError::config(
                    key,
                    format!("{exit} must be below its enter threshold {enter} (hysteresis)"),
                ));
            }
        }
        if self.critical_enter <= self.elevated_enter {
            return Err(MessagingError::config(
                "backpressure.critical_enter",
                format!(
                    "{} must be above backpressure.elevated_enter {}",
                    self.critical_enter, self.elevated_enter
                ),
            ));
        }
        if self.max_error_rate <= 0.0 || self.max_error_rate > 1.0 {
            return Err(MessagingError::config(
                "backpressure.max_error_rate",
                format!("must be in (0, 1], got {}", self.max_error_rate),
            ));
        }
        for (key, value) in [
            ("backpressure.max_queue_depth", self.max_queue_depth),
            ("backpressure.max_in_flight", self.max_in_flight),
            ("backpressure.max_latency_ms", self.max_latency_ms),
        ] {
            if value == 0 {
                return Err(MessagingError::config(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// The conventional variables and the key each sets.
const CONVENTIONAL_ENV: [(&str, &str); 6] = [
    ("DATABASE_URL", "connection.pgmq.database_url"),
    ("AMQP_URL", "connection.rabbitmq.url"),
    ("REDIS_URL", "connection.redis.url"),
    ("NATS_URL", "connection.nats.url"),
    ("SQS_ENDPOINT_URL", "connection.sqs.endpoint_url"),
    ("KAFKA_BROKERS", "connection.kafka.brokers"),
];

impl MessagingConfig {
    /// Reads defaults, then `path` (required to exist when given), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, MessagingError> {
        let mut figment = Figment::from(Serialized::defaults(MessagingConfig::default()));
        if let Some(path) = path {
            if !path.is_file() {
                return Err(MessagingError::config(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            figment = figment.merge(Toml::file(path));
        }
        Self::from_figment(figment.merge(Self::env_provider()))
    }

    /// Reads defaults and then the TOML text (no environment), for tests and embedding.
    pub fn from_toml_str(toml: &str) -> Result<Self, MessagingError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(MessagingConfig::default()))
                .merge(Toml::string(toml)),
        )
    }

    /// Sources given by the caller, extracted and validated like `load`.
    pub fn from_figment(figment: Figment) -> Result<Self, MessagingError> {
        let config: MessagingConfig = figment.extract().map_err(MessagingError::from_figment)?;
        config.validate()?;
        Ok(config)
    }

    /// The environment layer: conventional variables, then `TASKER_MQ_*`.
    pub fn env_provider() -> Figment {
        let conventional = Env::raw()
            .only(&CONVENTIONAL_ENV.map(|(var, _)| var))
            .map(|var| {
                let key = CONVENTIONAL_ENV
                    .iter()
                    .find(|(v, _)| var.as_str().eq_ignore_ascii_case(v))
                    .map_or("", |(_, key)| *key);
                key.into()
            });
        Figment::new()
            .merge(conventional)
            .merge(Env::prefixed("TASKER_MQ_").split("__"))
    }

    /// Checks values the types cannot: ranges, patterns, the chosen provider's section.
    pub fn validate(&self) -> Result<(), MessagingError> {
        let q = &self.queues;
        let pattern_count = q.namespace_pattern.matches("{namespace}").count();
        if pattern_count != 1 {
            return Err(MessagingError::config(
                "queues.namespace_pattern",
                format!(
                    "must contain {{namespace}} exactly once, found {pattern_count} in {:?}",
                    q.namespace_pattern
                ),
            ));
        }
        let suffix = &q.dead_letter_queue_suffix;
        if suffix.is_empty()
            || suffix.len() > 16
            || !suffix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(MessagingError::config(
                "queues.dead_letter_queue_suffix",
                format!("{suffix:?} must be 1 to 16 characters of a-z, 0-9 and _"),
            ));
        }
        for (i, ns) in q.namespaces.iter().enumerate() {
            let queue = q.namespace_pattern.replace("{namespace}", ns);
            QueueName::new(&queue).map_err(|e| {
                MessagingError::config(format!("queues.namespaces[{i}]"), e.to_string())
            })?;
        }
        if q.default_visibility_timeout_secs == 0 {
            return Err(MessagingError::config(
                "queues.default_visibility_timeout_secs",
                "must be at least 1",
            ));
        }
        if q.max_payload_bytes == 0 {
            return Err(MessagingError::config(
                "queues.max_payload_bytes",
                "must be at least 1",
            ));
        }
        let r = &self.retry_policy;
        if r.backoff_multiplier < 1.0 || !r.backoff_multiplier.is_finite() {
            return Err(MessagingError::config(
                "retry_policy.backoff_multiplier",
                format!(
                    "must be a finite number >= 1.0, got {}",
                    r.backoff_multiplier
                ),
            ));
        }
        if r.initial_backoff_ms > r.max_backoff_ms {
            return Err(MessagingError::config(
                "retry_policy.initial_backoff_ms",
                format!(
                    "{} exceeds retry_policy.max_backoff_ms {}",
                    r.initial_backoff_ms, r.max_backoff_ms
                ),
            ));
        }
        let cb = &self.circuit_breaker;
        for (key, value) in [
            ("circuit_breaker.failure_threshold", cb.failure_threshold),
            ("circuit_breaker.success_threshold", cb.success_threshold),
            (
                "circuit_breaker.half_open_max_calls",
                cb.half_open_max_calls,
            ),
        ] {
            if value == 0 {
                return Err(MessagingError::config(key, "must be at least 1"));
            }
        }
        let pct = self.resource_validation.max_connection_percentage;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(MessagingError::config(
                "resource_validation.max_connection_percentage",
                format!("must be in (0, 100], got {pct}"),
            ));
        }
        self.backpressure.validate()?;
        if let Some(fallback) = &self.fallback {
            if fallback.provider == self.provider {
                return Err(MessagingError::config(
                    "fallback.provider",
                    format!("must differ from provider ({})", self.provider),
                ));
            }
            self.validate_provider_section(fallback.provider)?;
        }
        self.validate_provider_section(self.provider)
    }

    fn validate_provider_section(&self, provider: ProviderKind) -> Result<(), MessagingError> {
        let c = &self.connection;
        let missing = |key: &str, var: &str| {
            Err(MessagingError::config(
                key,
                format!("required when provider = {provider} (or set {var})"),
            ))
        };
        match provider {
            ProviderKind::InMemory => Ok(()),
            ProviderKind::Pgmq => match &c.pgmq {
                None => missing("connection.pgmq.database_url", "DATABASE_URL"),
                Some(p) if p.pool_size == 0 => Err(MessagingError::config(
                    "connection.pgmq.pool_size",
                    "must be at least 1",
                )),
                Some(_) => Ok(()),
            },
            ProviderKind::Rabbitmq if c.rabbitmq.is_none() => {
                missing("connection.rabbitmq.url", "AMQP_URL")
            }
            ProviderKind::Redis if c.redis.is_none() => {
                missing("connection.redis.url", "REDIS_URL")
            }
            ProviderKind::Nats if c.nats.is_none() => missing("connection.nats.url", "NATS_URL"),
            ProviderKind::Kafka if c.kafka.is_none() => {
                missing("connection.kafka.brokers", "KAFKA_BROKERS")
            }
            _ => Ok(()),
        }
    }

    /// The dead-letter queue name of `queue` under this configuration.
    pub fn dead_letter_queue(&self, queue: &QueueName) -> Result<QueueName, MessagingError> {
        queue.dead_letter(&self.queues.dead_letter_queue_suffix)
    }
}

#[cfg(test)]
mod tests;
