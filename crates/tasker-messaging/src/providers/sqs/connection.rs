//! The SDK client: built once by `initialize` (HTTPS by rustls on the *ring* provider, the
//! same crypto as the RabbitMQ provider, so one process never holds two rustls providers),
//! checked with one `ListQueues` call; `health` and `stop`.

use std::sync::atomic::Ordering;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::config::Credentials;
use aws_smithy_http_client::tls;

use super::errors::ErrorMapper;
use super::SqsMessageService;
use crate::error::{MessagingError, Result};
use crate::service::MessagingHealth;

/// Codes that mean the endpoint answered and knew the caller but did not allow the call.
const ALLOWED_REFUSALS: [&str; 2] = ["AccessDenied", "AccessDeniedException"];

impl SqsMessageService {
    #[inline]
    pub(super) fn mapper<'a>(&'a self, operation: &'static str, queue: &'a str) -> ErrorMapper<'a> {
        ErrorMapper {
            endpoint: self.settings.endpoint_url.as_ref(),
            operation,
            queue,
            timeout: self.settings.operation_timeout,
        }
    }

    /// The client, once `initialize` built it and until `shutdown`.
    #[inline]
    pub(super) fn client(&self) -> Result<&aws_sdk_sqs::Client> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(MessagingError::NotInitialized(
                "the SQS service was shut down".into(),
            ));
        }
        self.client.get().ok_or_else(|| {
            MessagingError::NotInitialized("call initialize before using the SQS service".into())
        })
    }

    async fn build_client(&self) -> Result<aws_sdk_sqs::Client> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let timeouts = TimeoutConfig::builder()
            .operation_timeout(self.settings.operation_timeout)
            .connect_timeout(
                self.settings
                    .operation_timeout
                    .min(std::time::Duration::from_secs(5)),
            )
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.settings.region.clone()))
            .http_client(http)
            .timeout_config(timeouts);
        let mut credentials = self.settings.credentials.clone();
        if let Some((endpoint, from_url)) = self.settings.endpoint_parts()? {
            loader = loader.endpoint_url(endpoint);
            if credentials.is_none() {
                credentials = from_url;
            }
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret().to_owned(),
                None,
                None,
                "tasker-messaging",
            ));
        }
        let config = loader.load().await;
        Ok(aws_sdk_sqs::Client::new(&config))
    }

    /// Builds the client (once) and checks that the endpoint answers and knows the caller.
    pub(super) async fn connect(&self) -> Result<()> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(MessagingError::NotInitialized(
                "the SQS service was shut down".into(),
            ));
        }
        let client = self.client.get_or_try_init(|| self.build_client()).await?;
        self.probe(client).await
    }

    async fn probe(&self, client: &aws_sdk_sqs::Client) -> Result<()> {
        use aws_sdk_sqs::error::ProvideErrorMetadata;
        match client.list_queues().max_results(1).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code().is_some_and(|c| ALLOWED_REFUSALS.contains(&c)) => Ok(()),
            Err(e) => Err(self.mapper("initialize", "").map(e)),
        }
    }

    pub(super) async fn health(&self) -> Result<MessagingHealth> {
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                return Ok(MessagingHealth::Unhealthy {
                    error: e.to_string(),
                })
            }
        };
        if let Err(e) = self.probe(client).await {
            return Ok(MessagingHealth::Unhealthy {
                error: e.to_string(),
            });
        }
        let names: Vec<_> = self.queues.read().keys().cloned().collect();
        let counts = futures::future::join_all(names.iter().map(|q| self.counts(q))).await;
        let (mut depth, mut in_flight) = (0, 0);
        for c in counts.into_iter().flatten() {
            depth += c.visible;
            in_flight += c.in_flight;
        }
        Ok(MessagingHealth::Healthy {
            queue_depth: depth,
            in_flight,
        })
    }

    pub(super) async fn stop(&self) -> Result<()> {
        self.shut_down.store(true, Ordering::Release);
        self.queues.write().clear();
        Ok(())
    }
}
