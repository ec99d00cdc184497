//! A transparent layer that counts calls to `receive`, so the suite can tell a consumer that
//! waits from one that spins. Everything passes through unchanged.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::Result;
use crate::resilience::{Layer, Layered, Next, Op, Request, Response};
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
    fn call<'a>(
        &'a self,
        request: Request<'a>,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Response>> + Send + 'a {
        if request.op() == Op::Receive {
            self.receives.fetch_add(1, Ordering::Relaxed);
        }
        next.run(request)
    }
}

/// A service with a [`ReceiveCounter`] on top.
pub type CountingService = Layered<ReceiveCounter>;

impl CountingService {
    pub fn new(inner: Arc<dyn MessagingService>) -> Self {
        Layered::wrap(inner, ReceiveCounter::default())
    }
}
