//! `NatsSettings`: the server URL (a [`SecretUrl`]), stream replicas and the `[queues]`
//! defaults, from `MessagingConfig` or built by hand.

use std::time::Duration;

use crate::config::MessagingConfig;
use crate::error::{MessagingError, Result};
use crate::secret::SecretUrl;

/// Settings of the NATS JetStream provider.
///
/// `Debug` shows the URL redacted (user, password and token never print).
#[derive(Clone, Debug)]
pub struct NatsSettings {
    /// `nats://[user:password@]host:port` (or a token as the user part).
    pub url: SecretUrl,
    /// Replicas of every stream this service creates (3 on a three-node cluster).
    pub replicas: usize,
    /// How long connecting may take before `initialize` fails.
    pub connection_timeout: Duration,
    /// How long one JetStream API request or publish acknowledgement may take.
    pub request_timeout: Duration,
    pub default_max_receive_count: u32,
    pub dead_letter_suffix: String,
    pub max_payload_bytes: usize,
    /// The consumer's `AckWait`: the lease a receive with exactly this visibility timeout
    /// takes without a further message to the server.
    pub default_visibility_timeout: Duration,
}

impl NatsSettings {
    /// Settings for `url` with the defaults of `MessagingConfig`.
    pub fn new(url: impl Into<String>) -> Self {
        let config = MessagingConfig::default();
        NatsSettings {
            url: SecretUrl::new(url),
            replicas: 1,
            connection_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            default_max_receive_count: config.queues.max_receive_count,
            dead_letter_suffix: config.queues.dead_letter_queue_suffix.clone(),
            max_payload_bytes: config.queues.max_payload_bytes,
            default_visibility_timeout: config.queues.default_visibility_timeout(),
        }
    }

    /// From `connection.nats` (also set by `NATS_URL`) and `[queues]`.
    pub fn from_config(config: &MessagingConfig) -> Result<Self> {
        let Some(c) = &config.connection.nats else {
            return Err(MessagingError::Configuration {
                key: "connection.nats.url".into(),
                message: "required when provider = nats (or set NATS_URL)".into(),
            });
        };
        let mut s = NatsSettings::new(c.url.expose());
        s.replicas = c.replicas.clamp(1, 5);
        s.default_max_receive_count = config.queues.max_receive_count;
        s.dead_letter_suffix = config.queues.dead_letter_queue_suffix.clone();
        s.max_payload_bytes = config.queues.max_payload_bytes;
        s.default_visibility_timeout = config.queues.default_visibility_timeout();
        Ok(s)
    }

    /// Streams created with `replicas` copies (1 to 5; JetStream's limit).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.clamp(1, 5);
        self
    }

    pub fn with_connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Checks the URL (or each of a comma-separated list of servers) parses; the error never
    /// shows it.
    pub(super) fn check(&self) -> Result<()> {
        for one in self.url.expose().split(',') {
            let url = url::Url::parse(one.trim()).map_err(|_| {
                MessagingError::config(
                    "connection.nats.url",
                    format!("not a URL: {}", crate::secret::redact_url(one)),
                )
            })?;
            if !matches!(url.scheme(), "nats" | "tls") {
                return Err(MessagingError::config(
                    "connection.nats.url",
                    format!("scheme {:?}: expected nats:// or tls://", url.scheme()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_never_show_the_password() {
        let s = NatsSettings::new("nats://tasker:s3cr3t-pw@127.0.0.1:4222");
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        let bad = NatsSettings::new("nats//tasker:s3cr3t-pw@host");
        let err = bad.check().unwrap_err().to_string();
        assert!(!err.contains("s3cr3t-pw"), "{err}");
    }

    #[test]
    fn missing_section_names_the_key_and_variable() {
        let config = MessagingConfig::default();
        let err = NatsSettings::from_config(&config).unwrap_err().to_string();
        assert!(
            err.contains("connection.nats.url") && err.contains("NATS_URL"),
            "{err}"
        );
    }
}
