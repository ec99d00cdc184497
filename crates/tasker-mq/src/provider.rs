//! Turns the global options into a `MessagingConfig` and a ready service.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use tasker_messaging::{
    build_service, MessagingConfig, MessagingError, MessagingService, ProviderKind, QueueName,
};

/// Options every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// TOML configuration file; environment variables (TASKER_MQ_*, DATABASE_URL, ...)
    /// override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Provider to use, overriding the configuration: in_memory (alias memory), pgmq,
    /// rabbitmq, sqs, redis, kafka, nats. Default: in_memory.
    #[arg(long, global = true, value_name = "PROVIDER")]
    pub provider: Option<String>,
}

impl GlobalOpts {
    /// Defaults, then the file, then the environment, then `--provider`; validated as a whole
    /// so `--provider in_memory` works even when the environment names a provider whose
    /// connection settings are missing.
    pub fn load_config(&self) -> anyhow::Result<MessagingConfig> {
        let provider = match &self.provider {
            Some(p) => Some(p.parse::<ProviderKind>()?),
            None => None,
        };
        let mut figment = Figment::from(Serialized::defaults(MessagingConfig::default()));
        if let Some(path) = &self.config {
            if !path.is_file() {
                return Err(MessagingError::Configuration {
                    key: "--config".into(),
                    message: format!("file {} does not exist", path.display()),
                }
                .into());
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(MessagingConfig::env_provider());
        if let Some(provider) = provider {
            figment = figment.merge(Serialized::default("provider", provider));
        }
        let config =
            MessagingConfig::from_figment(figment).with_context(|| match &self.config {
                Some(path) => format!("loading configuration from {}", path.display()),
                None => "loading configuration".to_owned(),
            })?;
        Ok(config)
    }

    /// The configuration with `provider` forced (for provider-specific subcommands).
    #[cfg_attr(not(feature = "pgmq"), allow(dead_code))]
    pub fn load_config_for_provider(&self, provider: &str) -> anyhow::Result<MessagingConfig> {
        GlobalOpts {
            config: self.config.clone(),
            provider: Some(provider.to_owned()),
        }
        .load_config()
    }

    /// The configured service, built and initialized.
    pub async fn connect(&self) -> anyhow::Result<(MessagingConfig, Arc<dyn MessagingService>)> {
        let config = self.load_config()?;
        let service = build_service(&config)
            .await
            .with_context(|| format!("starting the {} provider", config.provider))?;
        Ok((config, service))
    }
}

/// Validates a queue name from the command line before any I/O.
pub fn queue_name(name: &str) -> anyhow::Result<QueueName> {
    Ok(QueueName::new(name)?)
}
