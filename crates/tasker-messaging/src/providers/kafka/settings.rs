//! Settings of the Kafka provider, from `[connection.kafka]` (or `KAFKA_BROKERS`) and
//! `[queues]`.

use std::time::Duration;

use crate::config::MessagingConfig;
use crate::error::{MessagingError, Result};

/// Settings of the Kafka provider, from `[connection.kafka]` and `[queues]`.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// `host:port[,host:port...]` (`bootstrap.servers`). No credentials: SASL is not offered.
    pub brokers: String,
    /// Partitions of each queue's topic (1 keeps `fifo_order` for the whole queue).
    pub partitions: i32,
    pub default_max_receive_count: u32,
    pub dead_letter_suffix: String,
    pub max_payload_bytes: usize,
    /// Bound on one admin call, a metadata request or a produce.
    pub operation_timeout: Duration,
    /// How long the broker holds an empty fetch (`fetch.wait.max.ms`): bounds how late a
    /// consumer sees a record when the broker does not answer a waiting fetch at once.
    pub fetch_wait: Duration,
    /// How often acked offsets are committed (`auto.commit.interval.ms`): what a crash can
    /// deliver again beyond the unacked records.
    pub commit_interval: Duration,
    /// Records buffered in the service per queue before fetching pauses.
    pub max_buffered: usize,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self::with_queues(brokers.into(), &MessagingConfig::default())
    }

    fn with_queues(brokers: String, config: &MessagingConfig) -> Self {
        KafkaSettings {
            brokers,
            partitions: 1,
            default_max_receive_count: config.queues.max_receive_count,
            dead_letter_suffix: config.queues.dead_letter_queue_suffix.clone(),
            max_payload_bytes: config.queues.max_payload_bytes,
            operation_timeout: Duration::from_secs(10),
            fetch_wait: Duration::from_millis(20),
            commit_interval: Duration::from_millis(200),
            max_buffered: 50_000,
        }
    }

    pub fn from_config(config: &MessagingConfig) -> Result<Self> {
        let section =
            config
                .connection
                .kafka
                .as_ref()
                .ok_or_else(|| MessagingError::Configuration {
                    key: "connection.kafka.brokers".into(),
                    message: "missing (set KAFKA_BROKERS)".into(),
                })?;
        let settings = Self::with_queues(section.brokers.clone(), config);
        settings.validate()?;
        Ok(settings)
    }

    pub fn with_partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions;
        self
    }

    pub fn with_max_payload_bytes(mut self, max: usize) -> Self {
        self.max_payload_bytes = max;
        self
    }

    pub fn with_default_max_receive_count(mut self, max: u32) -> Self {
        self.default_max_receive_count = max;
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
        let bad = |message: String| MessagingError::Configuration {
            key: "connection.kafka.brokers".into(),
            message,
        };
        if self.brokers.trim().is_empty() {
            return Err(bad("empty broker list".into()));
        }
        for broker in self.brokers.split(',') {
            let broker = broker.trim();
            let ok = broker
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if broker.contains('@') {
                // Never echo what may be a password.
                return Err(bad("credentials are not accepted in the broker list".into()));
            }
            if !ok || broker.contains('/') {
                return Err(bad(format!(
                    "{broker:?} is not host:port (credentials and schemes are not accepted)"
                )));
            }
        }
        if self.partitions < 1 {
            return Err(MessagingError::Configuration {
                key: "connection.kafka.partitions".into(),
                message: format!("{} partitions; at least 1", self.partitions),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_must_be_host_port() {
        assert!(KafkaSettings::new("127.0.0.1:9092").validate().is_ok());
        assert!(KafkaSettings::new("a:1,b:2").validate().is_ok());
        for bad in ["", "localhost", "user:pw@h:1", "kafka://h:1", "h:port"] {
            let e = KafkaSettings::new(bad).validate().unwrap_err();
            assert!(!e.to_string().contains("pw@"), "{e}");
        }
        assert!(KafkaSettings::new("h:1")
            .with_partitions(0)
            .validate()
            .is_err());
    }
}
