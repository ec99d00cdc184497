//! One LISTEN connection for every queue of a service, feeding `wait_for_messages`.
//!
//! Our statements send `NOTIFY tasker_messaging, '<queue>'` when a queue may have gone from
//! nothing receivable to something (sends into an idle queue, dead-letter moves, redrives,
//! releases with visibility 0), and a trigger does for other clients' plain `pgmq.send` (see
//! `sql.rs`). The listener task wakes the waiters of that queue. When its connection drops it marks itself disconnected, wakes everyone (a message may
//! have arrived unseen), and reconnects after a short pause; meanwhile `wait_for_messages`
//! still returns after its bounded `max_wait`, so a consumer polls at its idle backoff and no
//! message waits forever.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::{watch, Notify};

use super::sql::CHANNEL;

/// Pause between reconnection attempts: short enough that wakeups resume quickly, long enough
/// not to hammer a server that is down (consumers poll meanwhile).
const RECONNECT_DELAY: Duration = Duration::from_millis(250);

/// Per-queue wakeups and the listener's state, shared by the service and the task.
#[derive(Default)]
pub(super) struct Wakeups {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
    connected: AtomicBool,
    backend_pid: AtomicI32,
    connections: AtomicU64,
}

impl Wakeups {
    pub fn notify_for(&self, queue: &str) -> Arc<Notify> {
        let mut queues = self.queues.lock();
        if let Some(n) = queues.get(queue) {
            return n.clone();
        }
        let n = Arc::new(Notify::new());
        queues.insert(queue.to_owned(), n.clone());
        n
    }

    pub fn forget(&self, queue: &str) {
        if let Some(n) = self.queues.lock().remove(queue) {
            n.notify_waiters();
        }
    }

    fn wake(&self, queue: &str) {
        let n = self.queues.lock().get(queue).cloned();
        if let Some(n) = n {
            n.notify_waiters();
            // Also leave a permit: a consumer between its empty receive and its wait would
            // otherwise miss this and sleep its whole backoff. A spurious wakeup costs one
            // receive.
            n.notify_one();
        }
    }

    pub fn wake_all(&self) {
        for n in self.queues.lock().values() {
            n.notify_waiters();
            n.notify_one();
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The listener connection's backend pid, when connected (for tests and diagnostics).
    pub fn backend_pid(&self) -> Option<i32> {
        self.is_connected()
            .then(|| self.backend_pid.load(Ordering::Acquire))
    }

    /// How many times the listener has connected (1 after start, +1 per reconnect).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }
}

/// Starts the listener task. It stops when `stop` turns true or is dropped.
pub(super) fn spawn(
    options: PgConnectOptions,
    wakeups: Arc<Wakeups>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    // Its own one-connection pool: the listener never takes a connection from the service's
    // pool, and a broken connection is tested and replaced on the next acquire.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(true)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(options);
    tokio::spawn(async move {
        loop {
            if *stop.borrow() {
                break;
            }
            match listen(&pool, &wakeups).await {
                Ok(mut listener) => {
                    tracing::debug!("pgmq listener connected");
                    let mut stopping = false;
                    loop {
                        tokio::select! {
                            _ = stop.changed() => {
                                stopping = true;
                                break;
                            }
                            received = listener.try_recv() => match received {
                                Ok(Some(n)) => wakeups.wake(n.payload()),
                                Ok(None) => {
                                    tracing::warn!("pgmq listener connection lost; reconnecting");
                                    break;
                                }
                                Err(e) => {
                                    // sqlx errors may quote what the server echoed back.
                                    let error = crate::secret::scrub_known(&e.to_string());
                                    tracing::warn!(%error, "pgmq listener failed; reconnecting");
                                    break;
                                }
                            }
                        }
                    }
                    // The listener holds the pool's connection: release it before closing.
                    drop(listener);
                    wakeups.connected.store(false, Ordering::Release);
                    wakeups.wake_all();
                    if stopping {
                        break;
                    }
                }
                Err(e) => {
                    let error = crate::secret::scrub_known(&e.to_string());
                    tracing::warn!(%error, "pgmq listener cannot connect; consumers poll meanwhile");
                }
            }
            tokio::select! {
                _ = stop.changed() => break,
                _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            }
        }
        wakeups.connected.store(false, Ordering::Release);
        pool.close().await;
    })
}

async fn listen(pool: &PgPool, wakeups: &Wakeups) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // We rebuild the listener ourselves after a loss, to know when it is back.
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut listener)
        .await?;
    wakeups.backend_pid.store(pid, Ordering::Release);
    wakeups.connections.fetch_add(1, Ordering::AcqRel);
    wakeups.connected.store(true, Ordering::Release);
    // Anything sent while we were away was not notified to us.
    wakeups.wake_all();
    Ok(listener)
}
