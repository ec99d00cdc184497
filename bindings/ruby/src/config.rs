//! The configuration a Ruby service is built from: the same sources as the CLI (defaults, a TOML
//! file, the environment), then a Hash given in Ruby (as JSON), then `provider:`.

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use tasker_messaging::{MessagingConfig, MessagingError, ProviderKind};

/// What `MessageServiceFactory.create` passes down.
pub struct ConfigSources {
    /// The Hash, as JSON text (keys as in the TOML file).
    pub json: Option<String>,
    /// A TOML file, as the CLI's `--config`.
    pub file: Option<String>,
    /// Read `TASKER_MQ_*` and the conventional variables (`DATABASE_URL`, ...).
    pub env: bool,
    pub provider: Option<String>,
}

impl ConfigSources {
    /// Defaults, the file, the environment, the Hash, `provider`; validated as a whole.
    pub fn load(&self) -> Result<MessagingConfig, MessagingError> {
        let mut figment = Figment::from(Serialized::defaults(MessagingConfig::default()));
        if let Some(path) = &self.file {
            if !std::path::Path::new(path).is_file() {
                return Err(MessagingError::Configuration {
                    key: "config_file".into(),
                    message: format!("file {path} does not exist"),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        if self.env {
            figment = figment.merge(MessagingConfig::env_provider());
        }
        if let Some(json) = &self.json {
            // Never quote the text: it may hold a password.
            let value: serde_json::Value =
                serde_json::from_str(json).map_err(|e| MessagingError::Configuration {
                    key: "<hash>".into(),
                    message: format!(
                        "not a JSON-like Hash (line {}, column {})",
                        e.line(),
                        e.column()
                    ),
                })?;
            if !value.is_object() {
                return Err(MessagingError::Configuration {
                    key: "<hash>".into(),
                    message: "the configuration must be a Hash".into(),
                });
            }
            figment = figment.merge(Serialized::defaults(value));
        }
        if let Some(provider) = &self.provider {
            let provider: ProviderKind = provider.parse()?;
            figment = figment.merge(Serialized::default("provider", provider));
        }
        MessagingConfig::from_figment(figment)
    }
}
