//! Connecting: the pool, the notification listener's task, and the service's lifecycle
//! (initialize, health, shutdown). One-off connections (detecting and installing pgmq,
//! reading the server's limits) are in `install.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::watch;

use super::{install, listener, PgmqMessageService};
use crate::error::{MessagingError, Result};
use crate::queue_name::QueueName;
use crate::service::{MessagingHealth, MessagingService};

/// What `initialize` started: the pool and the listener task.
pub(super) struct Running {
    pool: PgPool,
    stop: watch::Sender<bool>,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PgmqMessageService {
    /// The connection pool, to begin transactions for [`Self::send_in_transaction`].
    pub fn pool(&self) -> Result<&PgPool> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(MessagingError::NotInitialized(
                "pgmq service was shut down".into(),
            ));
        }
        self.running
            .get()
            .map(|r| &r.pool)
            .ok_or_else(|| MessagingError::NotInitialized("call initialize() first".into()))
    }

    /// Whether the notification listener is connected now.
    pub fn listener_connected(&self) -> bool {
        self.wakeups.is_connected()
    }

    /// The listener connection's backend pid, when connected.
    pub fn listener_backend_pid(&self) -> Option<i32> {
        self.wakeups.backend_pid()
    }

    /// How many times the listener has connected (more than 1 after a reconnect).
    pub fn listener_connections(&self) -> u64 {
        self.wakeups.connections()
    }

    async fn start(&self) -> Result<Running> {
        install::prepare(
            &self.settings,
            &self.options,
            self.resource_requirements().db_connections,
        )
        .await?;
        let pool = PgPoolOptions::new()
            .max_connections(self.settings.pool_size)
            .acquire_timeout(self.settings.acquire_timeout)
            // Our statements are prepared once per connection and their generic plans are
            // the right ones (index scans bounded by the LIMIT). Left to itself PostgreSQL
            // compares them with custom plans that know the LIMIT, finds those cheaper on a
            // long queue and re-plans every receive (0.2 ms of a 1.5 ms receive).
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(conn, "SET plan_cache_mode = force_generic_plan")
                        .await
                        .map(|_| ())
                })
            })
            .connect_lazy_with(self.options.clone());
        let (stop, stop_rx) = watch::channel(false);
        let handle = listener::spawn(
            self.options.clone().application_name(&self.listener_name),
            self.wakeups.clone(),
            stop_rx,
        );
        // Wakeups are declared: give the listener a moment to be there from the start. If it
        // cannot connect, consumers poll until it can.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.wakeups.is_connected() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Running {
            pool,
            stop,
            listener: Mutex::new(Some(handle)),
        })
    }

    /// Connects once (concurrent callers wait for the first).
    pub(super) async fn start_once(&self) -> Result<()> {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(MessagingError::NotInitialized(
                "pgmq service was shut down".into(),
            ));
        }
        let _guard = self.init_lock.lock().await;
        if self.running.get().is_some() {
            return Ok(());
        }
        let running = self.start().await?;
        let _ = self.running.set(running);
        Ok(())
    }

    pub(super) async fn health(&self) -> Result<MessagingHealth> {
        if self.shut_down.load(Ordering::Acquire) {
            return Ok(MessagingHealth::Unhealthy {
                error: "shut down".into(),
            });
        }
        let Some(running) = self.running.get() else {
            return Ok(MessagingHealth::Unhealthy {
                error: "not initialized".into(),
            });
        };
        if let Err(e) = sqlx::query("SELECT 1").execute(&running.pool).await {
            return Ok(MessagingHealth::Unhealthy {
                error: self.err(e, "health check", None).to_string(),
            });
        }
        if !self.wakeups.is_connected() {
            return Ok(MessagingHealth::Degraded {
                reason: "notification listener is reconnecting; consumers poll meanwhile".into(),
            });
        }
        // Depth of the queues this service uses, one short statement each: counting every
        // queue in one transaction would hold locks a concurrent drop_queue needs (deadlock).
        let known: Vec<QueueName> = self.queues.read().keys().cloned().collect();
        let (mut depth, mut in_flight) = (0u64, 0u64);
        for queue in known {
            match self.get_queue_stats(&queue).await {
                Ok(stats) => {
                    depth += stats.message_count + stats.delayed_count.unwrap_or(0);
                    in_flight += stats.in_flight_count.unwrap_or(0);
                }
                Err(MessagingError::QueueNotFound { .. }) => {}
                Err(e) if e.is_retryable() => {
                    return Ok(MessagingHealth::Unhealthy {
                        error: e.to_string(),
                    })
                }
                Err(e) => {
                    return Ok(MessagingHealth::Degraded {
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(MessagingHealth::Healthy {
            queue_depth: depth,
            in_flight,
        })
    }

    pub(super) async fn stop(&self) -> Result<()> {
        self.shut_down.store(true, Ordering::Release);
        if let Some(running) = self.running.get() {
            let _ = running.stop.send(true);
            let handle = running.listener.lock().take();
            if let Some(handle) = handle {
                let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
            }
            running.pool.close().await;
        }
        self.wakeups.wake_all();
        Ok(())
    }
}
