//! No connection: the service is open from `new` until `shutdown`, after which every call
//! fails with `NotInitialized` and waiters wake. Health reports the depth of every queue.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::InMemoryMessageService;
use crate::error::{MessagingError, Result};
use crate::service::MessagingHealth;

impl InMemoryMessageService {
    #[inline]
    pub(super) fn check_open(&self) -> Result<()> {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(MessagingError::NotInitialized(
                "in-memory service was shut down".into(),
            ));
        }
        Ok(())
    }

    pub(super) async fn health(&self) -> Result<MessagingHealth> {
        if self.shut_down.load(Ordering::Relaxed) {
            return Ok(MessagingHealth::Unhealthy {
                error: "shut down".into(),
            });
        }
        let now = Instant::now();
        let queues: Vec<_> = self.queues.read().values().cloned().collect();
        let (mut depth, mut in_flight) = (0, 0);
        for q in queues {
            let counts = q.state.lock().counts(now);
            depth += counts.visible + counts.delayed;
            in_flight += counts.in_flight;
        }
        Ok(MessagingHealth::Healthy {
            queue_depth: depth,
            in_flight,
        })
    }

    pub(super) async fn stop(&self) -> Result<()> {
        self.shut_down.store(true, Ordering::Relaxed);
        for q in self.queues.read().values() {
            q.notify.notify_waiters();
        }
        Ok(())
    }
}
