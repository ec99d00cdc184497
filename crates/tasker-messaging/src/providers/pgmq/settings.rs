//! Settings of the PGMQ provider, from `[connection.pgmq]` (or `DATABASE_URL`) and `[queues]`.

use std::time::Duration;

use crate::config::{MessagingConfig, ResourceValidationConfig};
use crate::error::{MessagingError, Result};
use crate::secret::SecretUrl;

/// Settings of the PGMQ provider.
#[derive(Clone, Debug)]
pub struct PgmqSettings {
    pub database_url: SecretUrl,
    /// Connections in the pool (the listener holds one more).
    pub pool_size: u32,
    /// Install pgmq's SQL when the database has neither the extension nor the SQL.
    pub install_sql: bool,
    /// How long a call waits for a pooled connection before a retryable `Connection` error.
    pub acquire_timeout: Duration,
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
            acquire_timeout: Duration::from_secs(5),
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
            acquire_timeout: Duration::from_millis(pgmq.acquire_timeout_ms.max(1)),
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

    pub fn with_acquire_timeout(mut self, acquire_timeout: Duration) -> Self {
        self.acquire_timeout = acquire_timeout;
        self
    }

    pub fn with_install_sql(mut self, install_sql: bool) -> Self {
        self.install_sql = install_sql;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_acquire_timeout_comes_from_the_config() {
        let url = "postgres://u:p@127.0.0.1/db";
        let c = MessagingConfig::from_toml_str(&format!(
            "provider = 'pgmq'\n[connection.pgmq]\ndatabase_url = '{url}'"
        ))
        .unwrap();
        let default = PgmqSettings::from_config(&c).unwrap();
        assert_eq!(default.acquire_timeout, Duration::from_secs(5));
        assert_eq!(
            default.acquire_timeout,
            PgmqSettings::new(SecretUrl::new(url)).acquire_timeout
        );
        let c = MessagingConfig::from_toml_str(&format!(
            "provider = 'pgmq'\n[connection.pgmq]\ndatabase_url = '{url}'\nacquire_timeout_ms = 750"
        ))
        .unwrap();
        let set = PgmqSettings::from_config(&c).unwrap();
        assert_eq!(set.acquire_timeout, Duration::from_millis(750));
    }
}
