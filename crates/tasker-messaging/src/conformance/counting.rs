//! A transparent layer that counts calls to `receive`, so the suite can tell a consumer that
//! waits from one that spins. Everything passes through unchanged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::resilience::{Layer, LayerFuture, Layered, Next, Op, Request};
use crate::service::MessagingService;

/// Counts receives passing it.
#[derive(Debug, Default)]
pub struct ReceiveCounter {
    receives: AtomicU64,
}

impl ReceiveCounter {
    /// Calls to `receive` so far.
    pub fn receives(&self) -> u64 {
        self.receives.load(Ordering::Relaxed)
    }
}

impl Layer for ReceiveCounter {
    fn call(&self, request: Request<'_>, next: Next<'_>) -> impl LayerFuture {
        if request.op() == Op::Receive {
            self.receives.fetch_add(1, Ordering::Relaxed);
        }
        async move { next.run(request).await }
    }
}

/// A service with a [`ReceiveCounter`] on top.
pub type CountingService = Layered<ReceiveCounter>;

impl CountingService {
    pub fn new(inner: Arc<dyn MessagingService>) -> Self {
        Layered::wrap(inner, ReceiveCounter::default())
    }
}
