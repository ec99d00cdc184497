//! Settings of the RabbitMQ provider, from `[connection.rabbitmq]` (or `AMQP_URL`) and
//! `[queues]`, and the TLS files of an `amqps://` URL (read and checked when the service is
//! built).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};

use crate::config::{MessagingConfig, RabbitMqQueueType};
use crate::error::{MessagingError, Result};
use crate::secret::{scrub, SecretUrl};

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
    pub(super) fn load(&self) -> Result<OwnedTLSConfig> {
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
    pub(super) fn uri(&self) -> Result<AMQPUri> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::rabbitmq::RabbitMqMessageService;
    use crate::service::ProviderKind;

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
