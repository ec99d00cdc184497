//! Connecting (one async-nats client per service, which reconnects by itself), the lifecycle
//! (`initialize` / `health_check` / `shutdown`) and the JetStream API requests the admin
//! operations make.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::response::Response;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Link, NatsMessageService};
use crate::error::{MessagingError, Result};
use crate::secret;
use crate::service::{MessagingHealth, ProviderKind};

impl NatsMessageService {
    /// The connection, once `initialize` made it and until `shutdown`.
    #[inline]
    pub(super) fn link(&self) -> Result<&Link> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(MessagingError::NotInitialized(
                "the NATS service was shut down".into(),
            ));
        }
        self.link
            .get()
            .ok_or_else(|| MessagingError::NotInitialized("call initialize first".into()))
    }

    /// Connects once (concurrent and repeated calls share the one connection) and checks
    /// JetStream answers.
    pub(super) async fn connect(&self) -> Result<()> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(MessagingError::NotInitialized(
                "the NATS service was shut down".into(),
            ));
        }
        self.settings.check()?;
        self.link.get_or_try_init(|| self.open()).await?;
        self.account_info("initialize (JetStream account info)")
            .await
    }

    /// Asks JetStream for the account's info: an error when JetStream is off or not ready.
    async fn account_info(&self, operation: &'static str) -> Result<()> {
        match self
            .api::<serde_json::Value, _>(operation, "INFO".into(), &serde_json::json!({}))
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) => Err(MessagingError::Provider {
                provider: ProviderKind::Nats,
                operation,
                message: secret::scrub(&e.to_string(), &self.settings.url),
                retryable: true,
            }),
        }
    }

    async fn open(&self) -> Result<Link> {
        let s = &self.settings;
        let options = async_nats::ConnectOptions::new()
            .name("tasker-mq")
            .connection_timeout(s.connection_timeout)
            .request_timeout(Some(s.request_timeout))
            // Messages a fetch brings arrive on its own subscription; keep room for a batch.
            .subscription_capacity(16 * 1024);
        // One server or a comma-separated list (a cluster's nodes).
        let servers: Vec<&str> = s.url.expose().split(',').map(str::trim).collect();
        let connect = options.connect(servers);
        let client = tokio::time::timeout(s.connection_timeout + Duration::from_secs(1), connect)
            .await
            .map_err(|_| MessagingError::Timeout {
                operation: "connect",
                after: s.connection_timeout,
            })?
            .map_err(|e| MessagingError::Connection {
                provider: ProviderKind::Nats,
                message: format!(
                    "{}: {}",
                    s.url.redacted(),
                    secret::scrub(&e.to_string(), &s.url)
                ),
            })?;
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(s.request_timeout)
            .build(client.clone());
        Ok(Link { client, js })
    }

    /// A JetStream API request (`$JS.API.<subject>`): the server's answer, or its error.
    pub(super) async fn api<T: DeserializeOwned, B: Serialize>(
        &self,
        operation: &'static str,
        subject: String,
        body: &B,
    ) -> Result<std::result::Result<T, async_nats::jetstream::Error>> {
        let link = self.link()?;
        let response: Response<T> = link
            .js
            .request(subject, body)
            .await
            .map_err(|e| self.err(operation, None, e))?;
        Ok(match response {
            Response::Ok(value) => Ok(value),
            Response::Err { error } => Err(error),
        })
    }

    pub(super) async fn health(&self) -> Result<MessagingHealth> {
        let link = match self.link() {
            Ok(link) => link,
            Err(e) => {
                return Ok(MessagingHealth::Unhealthy {
                    error: e.to_string(),
                })
            }
        };
        let _ = link;
        if let Err(e) = self.account_info("health_check").await {
            return Ok(MessagingHealth::Unhealthy {
                error: e.to_string(),
            });
        }
        let queues: Vec<_> = self.queues.read().keys().cloned().collect();
        let (mut depth, mut in_flight) = (0, 0);
        for q in queues {
            if let Ok(counts) = self.counts(&q).await {
                depth += counts.messages.saturating_sub(counts.ack_pending);
                in_flight += counts.ack_pending;
            }
        }
        Ok(MessagingHealth::Healthy {
            queue_depth: depth,
            in_flight,
        })
    }

    pub(super) async fn stop(&self) -> Result<()> {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(link) = self.link.get() {
            // Writes out what was published (acks, lease NAKs), then closes; bounded.
            let _ = tokio::time::timeout(self.settings.request_timeout, async {
                let _ = link.client.flush().await;
                let _ = link.client.drain().await;
            })
            .await;
        }
        Ok(())
    }
}

/// Asking again while a cluster settles (a stream's leader being elected, an assignment not
/// yet applied): waits that double from `first` up to `max` (backon's exponential backoff,
/// no jitter), as long as the next one ends before the deadline.
pub(super) struct Settling {
    delays: backon::ExponentialBackoff,
    deadline: tokio::time::Instant,
}

impl Settling {
    /// Waits of 10 ms doubling to 200 ms, for `within` from now (the API lookups).
    pub fn api(within: Duration) -> Self {
        Settling::new(
            Duration::from_millis(10),
            Duration::from_millis(200),
            within,
        )
    }

    pub fn new(first: Duration, max: Duration, within: Duration) -> Self {
        use backon::BackoffBuilder;
        Settling {
            delays: backon::ExponentialBuilder::default()
                .with_min_delay(first)
                .with_max_delay(max)
                .without_max_times()
                .build(),
            deadline: tokio::time::Instant::now() + within,
        }
    }

    /// Sleeps the next wait and returns true; false (at once) when it would end at or after
    /// the deadline: the caller stops asking.
    pub async fn wait(&mut self) -> bool {
        match self.delays.next() {
            Some(d) if tokio::time::Instant::now() + d < self.deadline => {
                tokio::time::sleep(d).await;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn settling_doubles_to_its_cap_and_stops_before_the_deadline() {
        let start = tokio::time::Instant::now();
        let mut settling = Settling::api(Duration::from_secs(1));
        let mut waits = Vec::new();
        let mut before = start;
        while settling.wait().await {
            let now = tokio::time::Instant::now();
            waits.push((now - before).as_millis());
            before = now;
        }
        // 10+20+40+80+160+200+200 = 710 ms; the next 200 ms would end at 910 < 1000, so it
        // is taken too (910 ms); one more would end at 1110 ms, past the deadline.
        assert_eq!(waits, vec![10, 20, 40, 80, 160, 200, 200, 200]);
        assert!(tokio::time::Instant::now() - start < Duration::from_secs(1));
    }
}
