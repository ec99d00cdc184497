//! Settings of the Redis provider, from `[connection.redis]` (or `REDIS_URL`) and `[queues]`,
//! and the URL's topology: one server, or a Redis Cluster.

use std::time::Duration;

use crate::config::MessagingConfig;
use crate::error::{MessagingError, Result};
use crate::secret::{scrub, SecretUrl};

/// Settings of the Redis provider.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` for one server (`rediss://` with TLS is not
    /// compiled in); `redis+cluster://host:7000,host:7001,...` or a `redis://` URL naming
    /// several `host:port` separated by commas selects the Cluster client.
    pub url: SecretUrl,
    /// Multiplexed connections commands are spread over (the wakeup subscriber holds one more).
    pub pool_size: u32,
    pub default_max_receive_count: u32,
    pub dead_letter_suffix: String,
    pub max_payload_bytes: usize,
    /// How long one command may take before it is a `Timeout` (retryable).
    pub response_timeout: Duration,
}

impl RedisSettings {
    /// Defaults of [`MessagingConfig`] with this server.
    pub fn new(url: SecretUrl) -> Self {
        let config = MessagingConfig::default();
        RedisSettings {
            url,
            pool_size: 2,
            default_max_receive_count: config.queues.max_receive_count,
            dead_letter_suffix: config.queues.dead_letter_queue_suffix,
            max_payload_bytes: config.queues.max_payload_bytes,
            response_timeout: Duration::from_secs(10),
        }
    }

    pub fn from_config(config: &MessagingConfig) -> Result<Self> {
        let redis = config.connection.redis.as_ref().ok_or_else(|| {
            MessagingError::config(
                "connection.redis.url",
                "required when provider = redis (or set REDIS_URL)",
            )
        })?;
        let mut settings = RedisSettings::new(redis.url.clone());
        settings.pool_size = redis.pool_size.max(1);
        settings.default_max_receive_count = config.queues.max_receive_count;
        settings
            .dead_letter_suffix
            .clone_from(&config.queues.dead_letter_queue_suffix);
        settings.max_payload_bytes = config.queues.max_payload_bytes;
        Ok(settings)
    }

    pub fn with_pool_size(mut self, pool_size: u32) -> Self {
        self.pool_size = pool_size.max(1);
        self
    }

    /// The URL's nodes: one URL per node, each with the URL's credentials and options.
    pub(super) fn topology(&self) -> Result<Topology> {
        let raw = self.url.expose();
        let bad = |why: &str| {
            MessagingError::config(
                "connection.redis.url",
                format!("{why}: {}", scrub(raw, &self.url)),
            )
        };
        let (scheme, rest) = raw
            .split_once("://")
            .ok_or_else(|| bad("not a redis:// URL"))?;
        let (scheme, cluster) = match scheme {
            "redis" => ("redis", false),
            "redis+cluster" | "redis-cluster" => ("redis", true),
            "rediss" | "rediss+cluster" => {
                return Err(bad("TLS (rediss://) is not compiled into this build"))
            }
            _ => return Err(bad("the scheme must be redis:// or redis+cluster://")),
        };
        let (userinfo, hosts_and_tail) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let split_at = hosts_and_tail
            .find(['/', '?'])
            .unwrap_or(hosts_and_tail.len());
        let (hosts, tail) = hosts_and_tail.split_at(split_at);
        let nodes: Vec<SecretUrl> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|host| {
                let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
                SecretUrl::new(format!("{scheme}://{auth}{host}{tail}"))
            })
            .collect();
        if nodes.is_empty() {
            return Err(bad("the URL names no host"));
        }
        for node in &nodes {
            url::Url::parse(node.expose()).map_err(|_| bad("not a valid URL"))?;
        }
        Ok(if cluster || nodes.len() > 1 {
            Topology::Cluster(nodes)
        } else {
            Topology::Single(nodes.into_iter().next().expect("one node checked above"))
        })
    }
}

/// What the URL names.
#[derive(Clone, Debug)]
pub(super) enum Topology {
    Single(SecretUrl),
    Cluster(Vec<SecretUrl>),
}

impl Topology {
    /// The node the wakeup subscriber connects to (in a cluster, `PUBLISH` reaches every
    /// node).
    pub(super) fn first(&self) -> &SecretUrl {
        match self {
            Topology::Single(u) => u,
            Topology::Cluster(nodes) => &nodes[0],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(url: &str) -> Topology {
        RedisSettings::new(SecretUrl::new(url)).topology().unwrap()
    }

    #[test]
    fn one_host_is_a_single_server_several_or_the_scheme_a_cluster() {
        assert!(
            matches!(topology("redis://127.0.0.1:6379/2"), Topology::Single(u) if u.expose() == "redis://127.0.0.1:6379/2")
        );
        match topology("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001") {
            Topology::Cluster(n) => {
                assert_eq!(n.len(), 2);
                assert_eq!(n[1].expose(), "redis://:pw@127.0.0.1:7001");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            topology("redis://a:1,b:2"),
            Topology::Cluster(n) if n.len() == 2
        ));
        assert!(matches!(
            topology("redis+cluster://127.0.0.1:7000"),
            Topology::Cluster(n) if n.len() == 1
        ));
    }

    #[test]
    fn settings_never_show_the_password() {
        let s = RedisSettings::new(SecretUrl::new("redis://:s3cr3t-pw@127.0.0.1:6379"));
        assert!(!format!("{s:?}").contains("s3cr3t-pw"));
        let bad = RedisSettings::new(SecretUrl::new("http://:s3cr3t-pw@h:1"))
            .topology()
            .unwrap_err();
        assert!(!bad.to_string().contains("s3cr3t-pw"), "{bad}");
        assert!(!format!("{bad:?}").contains("s3cr3t-pw"));
    }
}
