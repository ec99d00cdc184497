//! Settings of the SQS provider, from `[connection.sqs]` (or `SQS_ENDPOINT_URL`) and `[queues]`.
//!
//! Region and credentials come from the usual AWS chain (environment, profile, IMDS, ...)
//! unless set here; static credentials are for local endpoints (moto) and tests. The secret
//! key is never shown: `Debug` prints `***`, and error texts are scrubbed of it.

use std::fmt;
use std::time::Duration;

use crate::config::MessagingConfig;
use crate::error::{MessagingError, Result};
use crate::secret::SecretUrl;

/// SQS's own limit on a message (body and attributes), since August 2025; also moto's.
pub const SQS_MAX_MESSAGE_BYTES: usize = 1_048_576;

/// Room kept for our message attributes (names, types and values) in SQS's message limit.
pub(super) const ATTRIBUTE_ALLOWANCE: usize = 1_024;

/// A payload of this size fits in one SQS message whatever its bytes are: binary payloads
/// travel base64-encoded (4/3 of their size), beside our attributes.
pub const SQS_MAX_PAYLOAD_BYTES: usize = (SQS_MAX_MESSAGE_BYTES - ATTRIBUTE_ALLOWANCE) / 4 * 3;

/// An access key pair given in the configuration instead of the AWS chain.
#[derive(Clone, PartialEq, Eq)]
pub struct SqsCredentials {
    pub access_key_id: String,
    secret_access_key: String,
}

impl SqsCredentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        SqsCredentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        }
    }

    /// The secret, for the SDK's signer only.
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    pub(super) fn secret(&self) -> &str {
        &self.secret_access_key
    }
}

impl fmt::Debug for SqsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .finish()
    }
}

/// How messages of a FIFO queue are put into message groups.
///
/// SQS hands out a group's messages one receive at a time: while any message of a group is
/// leased, no later message of that group is returned to anyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SqsMessageGroups {
    /// One group per correlation id; a message without one is its own group. Send order
    /// within a correlation id, concurrent consumers across them (the contract's default
    /// behaviour; `fifo_order` is not declared, since SQS orders nothing across groups).
    #[default]
    PerCorrelationId,
    /// One group per queue: strict send order (`fifo_order` declared), but only one
    /// receiver's batch in flight per queue at a time, so concurrent receivers wait for the
    /// holder to delete (stricter than the contract: conformance C7 and C8 cannot pass).
    PerQueue,
}

/// Settings of the SQS provider.
#[derive(Clone, Debug)]
pub struct SqsSettings {
    /// A local endpoint (moto, LocalStack); `None` uses the AWS endpoint of the region.
    /// `http://KEY:SECRET@host:port` also sets static credentials (the secret is redacted).
    pub endpoint_url: Option<SecretUrl>,
    pub region: String,
    /// Static credentials; `None` takes the AWS chain (or the endpoint URL's user info).
    pub credentials: Option<SqsCredentials>,
    /// Every queue this service creates or looks up is a FIFO queue (`<name>.fifo`).
    pub fifo: bool,
    pub message_groups: SqsMessageGroups,
    pub default_max_receive_count: u32,
    pub dead_letter_suffix: String,
    pub max_payload_bytes: usize,
    pub default_visibility_timeout: Duration,
    /// Bound on every call (connect, request, retries inside the SDK).
    pub operation_timeout: Duration,
    /// Send-batch chunks (10 messages each) in flight at once.
    pub send_concurrency: usize,
}

impl SqsSettings {
    /// Settings for `endpoint_url` with the defaults of `MessagingConfig`.
    pub fn new(endpoint_url: Option<String>) -> Self {
        let mut s = Self::from_parts(&MessagingConfig::default());
        s.endpoint_url = endpoint_url.map(SecretUrl::new);
        s
    }

    fn from_parts(config: &MessagingConfig) -> Self {
        let q = &config.queues;
        SqsSettings {
            endpoint_url: None,
            region: "us-east-1".into(),
            credentials: None,
            fifo: false,
            message_groups: SqsMessageGroups::PerCorrelationId,
            default_max_receive_count: q.max_receive_count,
            dead_letter_suffix: q.dead_letter_queue_suffix.clone(),
            max_payload_bytes: q.max_payload_bytes.min(SQS_MAX_PAYLOAD_BYTES),
            default_visibility_timeout: q.default_visibility_timeout(),
            operation_timeout: Duration::from_secs(30),
            send_concurrency: 8,
        }
    }

    /// From `[connection.sqs]` and `[queues]`; the section may be absent (the AWS chain).
    pub fn from_config(config: &MessagingConfig) -> Result<Self> {
        let mut s = Self::from_parts(config);
        if let Some(c) = &config.connection.sqs {
            s.endpoint_url = c.endpoint_url.clone();
            s.region = c.region.clone();
            s.fifo = c.fifo;
        }
        s.check()?;
        Ok(s)
    }

    pub fn with_fifo(mut self, fifo: bool) -> Self {
        self.fifo = fifo;
        self
    }

    pub fn with_credentials(mut self, credentials: SqsCredentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Checks the endpoint URL; errors show it redacted.
    pub fn check(&self) -> Result<()> {
        if let Some(url) = &self.endpoint_url {
            let parsed = url::Url::parse(url.expose()).map_err(|e| {
                MessagingError::config(
                    "connection.sqs.endpoint_url",
                    format!("{} is not a URL: {e}", url.redacted()),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(MessagingError::config(
                    "connection.sqs.endpoint_url",
                    format!("{} must be http:// or https://", url.redacted()),
                ));
            }
        }
        if self.send_concurrency == 0 {
            return Err(MessagingError::config(
                "sqs.send_concurrency",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The endpoint without user info, and the credentials it carried (if any).
    pub fn endpoint_parts(&self) -> Result<Option<(String, Option<SqsCredentials>)>> {
        let Some(url) = &self.endpoint_url else {
            return Ok(None);
        };
        let mut parsed = url::Url::parse(url.expose()).map_err(|e| {
            MessagingError::config(
                "connection.sqs.endpoint_url",
                format!("{} is not a URL: {e}", url.redacted()),
            )
        })?;
        let creds = match (parsed.username(), parsed.password()) {
            ("", _) | (_, None) => None,
            (user, Some(pw)) => {
                let decode = |s: &str| {
                    url::form_urlencoded::parse(format!("x={s}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default()
                };
                Some(SqsCredentials::new(decode(user), decode(pw)))
            }
        };
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        let mut text = parsed.to_string();
        if text.ends_with('/') {
            text.pop();
        }
        Ok(Some((text, creds)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_never_shown() {
        let mut s = SqsSettings::new(Some("http://AKID:s3cr3t-key@127.0.0.1:4566".into()));
        s.credentials = Some(SqsCredentials::new("AKID2", "an0ther-secret"));
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cr3t-key"), "{shown}");
        assert!(!shown.contains("an0ther-secret"), "{shown}");
        let (endpoint, creds) = s.endpoint_parts().unwrap().unwrap();
        assert_eq!(endpoint, "http://127.0.0.1:4566");
        assert_eq!(creds.unwrap().secret(), "s3cr3t-key");
    }

    #[test]
    fn a_bad_endpoint_is_a_configuration_error_without_the_secret() {
        let s = SqsSettings::new(Some("ftp://AKID:s3cr3t-key@127.0.0.1:4566".into()));
        let e = s.check().unwrap_err();
        assert!(matches!(e, MessagingError::Configuration { .. }));
        assert!(!format!("{e} {e:?}").contains("s3cr3t-key"));
    }

    #[test]
    fn any_payload_of_the_declared_size_fits_one_message() {
        let encoded = SQS_MAX_PAYLOAD_BYTES.div_ceil(3) * 4;
        assert!(encoded + ATTRIBUTE_ALLOWANCE <= SQS_MAX_MESSAGE_BYTES);
    }
}
