//! Resource validation: what a service needs against what the system can give.
//!
//! A provider states its needs ([`ResourceRequirements`]); the factory checks them against
//! [`SystemResourceLimits`] before `initialize`, so a pool larger than the database allows is
//! refused with both numbers instead of failing later under load.

use serde::Serialize;

use crate::config::ResourceValidationConfig;
use crate::error::MessagingError;

/// What a service holds once initialized.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ResourceRequirements {
    /// Database connections (PGMQ pool, listener).
    pub db_connections: u32,
    /// Estimated memory in MiB (buffers, prefetch).
    pub memory_mb: u64,
}

/// What the system can give: measured from the server and the host, or configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SystemResourceLimits {
    /// The database server's `max_connections`, when known.
    pub database_max_connections: Option<u32>,
    /// Connections the database reserves for superusers and other clients.
    pub database_reserved_connections: u32,
    /// Memory available to this process, in MiB, when known.
    pub available_memory_mb: Option<u64>,
}

impl SystemResourceLimits {
    /// No known limits: validation passes.
    pub fn unknown() -> Self {
        SystemResourceLimits {
            database_max_connections: None,
            database_reserved_connections: 0,
            available_memory_mb: None,
        }
    }

    /// Database connections this service may use under `config`
    /// (`max_connection_percentage` of what the server leaves to clients).
    pub fn available_db_connections(&self, config: &ResourceValidationConfig) -> Option<u32> {
        self.database_max_connections.map(|max| {
            let usable = max.saturating_sub(self.database_reserved_connections);
            ((usable as f64) * (config.max_connection_percentage as f64 / 100.0)).floor() as u32
        })
    }

    /// Refuses `required` when it exceeds these limits, naming both numbers.
    pub fn validate(
        &self,
        required: &ResourceRequirements,
        config: &ResourceValidationConfig,
    ) -> Result<(), MessagingError> {
        if !config.enforce_limits {
            return Ok(());
        }
        if let Some(available) = self.available_db_connections(config) {
            if required.db_connections > available {
                return Err(MessagingError::ResourcesExceeded {
                    resource: format!(
                        "database connections ({}% of max_connections {} less {} reserved)",
                        config.max_connection_percentage,
                        self.database_max_connections.unwrap_or_default(),
                        self.database_reserved_connections
                    ),
                    required: required.db_connections as u64,
                    available: available as u64,
                });
            }
        }
        if let Some(available) = self.available_memory_mb {
            if required.memory_mb > available {
                return Err(MessagingError::ResourcesExceeded {
                    resource: "memory (MiB)".into(),
                    required: required.memory_mb,
                    available,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_pool_larger_than_the_server_allows_naming_both_numbers() {
        let limits = SystemResourceLimits {
            database_max_connections: Some(100),
            database_reserved_connections: 3,
            available_memory_mb: Some(512),
        };
        let config = ResourceValidationConfig {
            enforce_limits: true,
            max_connection_percentage: 50.0,
            memory_per_queue_mb: 1,
        };
        let ok = ResourceRequirements {
            db_connections: 48,
            memory_mb: 10,
        };
        limits.validate(&ok, &config).unwrap();
        let too_many = ResourceRequirements {
            db_connections: 49,
            memory_mb: 10,
        };
        let err = limits.validate(&too_many, &config).unwrap_err().to_string();
        assert!(
            err.contains("49") && err.contains("48") && err.contains("100"),
            "{err}"
        );

        let off = ResourceValidationConfig {
            enforce_limits: false,
            ..config
        };
        limits.validate(&too_many, &off).unwrap();
    }
}
