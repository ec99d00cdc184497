//! A transparent wrapper that counts calls to `receive`, so the suite can tell a consumer that
//! waits from one that spins. Everything else goes straight to the inner service.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::Result;
use crate::resilience::{layered_service, Layer, Op};
use crate::service::MessagingService;

/// Delegates everything to `inner`, counting receives.
pub struct CountingService {
    inner: Arc<dyn MessagingService>,
    receives: AtomicU64,
}

impl CountingService {
    pub fn new(inner: Arc<dyn MessagingService>) -> Self {
        CountingService {
            inner,
            receives: AtomicU64::new(0),
        }
    }

    /// Calls to `receive` so far.
    pub fn receives(&self) -> u64 {
        self.receives.load(Ordering::Relaxed)
    }

    async fn run<T, F, Fut>(&self, op: Op, f: F) -> Result<T>
    where
        F: Fn() -> Fut + Send + Sync,
        Fut: Future<Output = Result<T>> + Send,
        T: Send,
    {
        if op == Op::Receive {
            self.receives.fetch_add(1, Ordering::Relaxed);
        }
        f().await
    }
}

impl Layer for CountingService {
    fn inner(&self) -> &dyn MessagingService {
        &*self.inner
    }
}

layered_service!(CountingService);
