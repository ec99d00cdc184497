//! Connecting (one server through redis-rs's reconnecting `ConnectionManager`, or a Redis
//! Cluster through its async cluster client), the connections commands are spread over, and
//! the lifecycle: `initialize` (`connect`), `health_check` (`health`), `shutdown` (`stop`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use serde::Serialize;

use super::errors::map_redis;
use super::settings::Topology;
use super::wakeup::Wakeups;
use super::RedisMessageService;
use crate::error::{MessagingError, Result};
use crate::service::MessagingHealth;

/// One multiplexed connection: to one server (reconnects by itself) or to a cluster.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What an initialized service holds.
pub(super) struct Link {
    conns: Vec<Conn>,
    next: AtomicUsize,
    pub(super) wakeups: Wakeups,
}

impl Link {
    /// The next connection, round robin (a handle: cloning is a reference count).
    #[inline]
    pub(super) fn conn(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }
}

/// The server's persistence mode, as `health_check` logs it and
/// [`RedisMessageService::persistence`] returns it (see docs/semantics.md, "Durability").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RedisPersistence {
    /// `aof_enabled` of `INFO persistence`.
    pub aof_enabled: bool,
    /// `appendfsync` (`always`, `everysec`, `no`), when `CONFIG GET` is allowed.
    pub appendfsync: Option<String>,
    /// `save` points (RDB snapshots), when `CONFIG GET` is allowed; empty: none.
    pub save: Option<String>,
}

impl RedisPersistence {
    /// What an acknowledged send survives, in a few words.
    pub fn summary(&self) -> String {
        match (self.aof_enabled, self.appendfsync.as_deref()) {
            (true, Some("always")) => "AOF appendfsync always: acknowledged writes survive a crash".into(),
            (true, Some(mode)) => format!("AOF appendfsync {mode}: a crash may lose about the last second of writes"),
            (true, None) => "AOF on (appendfsync unknown)".into(),
            (false, _) => "no AOF: a crash loses every write since the last RDB snapshot (all of them without snapshots)".into(),
        }
    }
}

impl RedisMessageService {
    /// Connects every pooled connection (once; concurrent callers wait for the first).
    pub(super) async fn connect(&self) -> Result<()> {
        let _guard = self.init_lock.lock().await;
        if self.link.read().is_some() {
            return Ok(());
        }
        let n = self.settings.pool_size.max(1) as usize;
        let mut conns = Vec::with_capacity(n);
        match &self.topology {
            Topology::Single(url) => {
                let client = redis::Client::open(url.expose())
                    .map_err(|e| map_redis(e, "connect", None, None, &self.settings.url))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(self.settings.response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                for _ in 0..n {
                    let manager = client
                        .get_connection_manager_with_config(config.clone())
                        .await
                        .map_err(|e| map_redis(e, "connect", None, None, &self.settings.url))?;
                    conns.push(Conn::Single(manager));
                }
            }
            Topology::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(
                    nodes.iter().map(|u| u.expose().to_owned()),
                )
                .connection_timeout(Duration::from_secs(5))
                .response_timeout(self.settings.response_timeout)
                .build()
                .map_err(|e| map_redis(e, "connect", None, None, &self.settings.url))?;
                for _ in 0..n {
                    let conn = client
                        .get_async_connection()
                        .await
                        .map_err(|e| map_redis(e, "connect", None, None, &self.settings.url))?;
                    conns.push(Conn::Cluster(conn));
                }
            }
        }
        // Check that the server answers and the credentials hold.
        let mut probe = conns[0].clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut probe)
            .await
            .map_err(|e| map_redis(e, "connect", None, None, &self.settings.url))?;
        let wakeups = Wakeups::new(self.topology.first().clone(), self.settings.url.clone());
        *self.link.write() = Some(Arc::new(Link {
            conns,
            next: AtomicUsize::new(0),
            wakeups,
        }));
        Ok(())
    }

    /// The connections, or `NotInitialized`.
    #[inline]
    pub(super) fn link(&self) -> Result<Arc<Link>> {
        self.link.read().clone().ok_or_else(|| {
            MessagingError::NotInitialized("redis service not initialized or shut down".into())
        })
    }

    /// The server's persistence mode (`INFO persistence`, `CONFIG GET appendfsync save`).
    pub(super) async fn read_persistence(&self) -> Result<RedisPersistence> {
        let mut conn = self.link()?.conn();
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.err(e, "health", None))?;
        let aof_enabled = info.lines().any(|l| l.trim() == "aof_enabled:1");
        // Managed servers may refuse CONFIG: then the mode is unknown, not an error.
        let config: Option<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async(&mut conn)
            .await
            .ok();
        let save: Option<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("save")
            .query_async(&mut conn)
            .await
            .ok();
        let second = |v: Option<Vec<String>>| v.and_then(|v| v.into_iter().nth(1));
        Ok(RedisPersistence {
            aof_enabled,
            appendfsync: second(config),
            save: second(save),
        })
    }

    /// Healthy with the depth and in-flight count of the queues this instance created.
    pub(super) async fn health(&self) -> Result<MessagingHealth> {
        let link = match self.link() {
            Ok(link) => link,
            Err(e) => {
                return Ok(MessagingHealth::Unhealthy {
                    error: e.to_string(),
                })
            }
        };
        let mut conn = link.conn();
        if let Err(e) = redis::cmd("PING").query_async::<String>(&mut conn).await {
            return Ok(MessagingHealth::Unhealthy {
                error: self.err(e, "health", None).to_string(),
            });
        }
        match self.read_persistence().await {
            Ok(p) => tracing::info!(
                aof_enabled = p.aof_enabled,
                appendfsync = p.appendfsync.as_deref().unwrap_or("unknown"),
                "redis persistence: {}",
                p.summary()
            ),
            Err(e) => tracing::warn!(error = %e, "redis persistence mode unknown"),
        }
        let queues: Vec<_> = self.created.read().iter().cloned().collect();
        let (mut depth, mut in_flight) = (0, 0);
        for q in queues {
            if let Ok(stats) = self.stats(&q).await {
                depth += stats.message_count;
                in_flight += stats.in_flight_count.unwrap_or(0);
            }
        }
        Ok(MessagingHealth::Healthy {
            queue_depth: depth,
            in_flight,
        })
    }

    /// Drops the connections (leases stay in Redis: they are durable).
    pub(super) async fn stop(&self) -> Result<()> {
        let _guard = self.init_lock.lock().await;
        self.link.write().take();
        Ok(())
    }
}
