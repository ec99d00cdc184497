//! A fault-injecting wrapper for tests and benchmarks: fails on command, adds latency.
//!
//! Wrap a real or in-memory provider and drive faults from a shared [`FaultControl`]:
//! fail the next *n* calls, fail every call until healed, fail only some operations, or delay
//! every call (with `tokio::time::sleep`, so paused-time tests control it). It counts how many
//! calls reached the wrapped service, which is how tests prove that an open circuit did not
//! touch the backend.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::Stream;
use parking_lot::Mutex;

use super::layer::{Layer, LayerFuture, Next, Request, StreamInfo};
use super::layered::Layered;
use super::Op;
use crate::error::MessagingError;
use crate::message::ReceivedMessage;
use crate::resources::ResourceRequirements;
use crate::service::{MessageStream, MessagingService, ProviderKind};

/// The commands a test gives a [`FaultInjectingService`]; cheap to clone and share.
#[derive(Debug, Default)]
pub struct FaultControl {
    fail_next: AtomicU64,
    failing: AtomicBool,
    /// Operations faults apply to; empty means all.
    only: Mutex<HashSet<Op>>,
    error: Mutex<Option<MessagingError>>,
    latency: Mutex<Duration>,
    requirements: Mutex<Option<ResourceRequirements>>,
    calls: AtomicU64,
    reached: AtomicU64,
    injected: AtomicU64,
    concurrent: AtomicUsize,
    max_concurrent: AtomicUsize,
}

impl FaultControl {
    pub fn new() -> Arc<Self> {
        Arc::new(FaultControl::default())
    }

    /// Fails the next `n` calls (of the selected operations), then behaves.
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Fails every call (of the selected operations) until [`FaultControl::heal`].
    pub fn fail_always(&self) {
        self.failing.store(true, Ordering::SeqCst);
    }

    /// Stops failing (latency stays as set).
    pub fn heal(&self) {
        self.failing.store(false, Ordering::SeqCst);
        self.fail_next.store(0, Ordering::SeqCst);
    }

    /// Restricts faults to these operations (latency applies to all).
    pub fn only(&self, ops: &[Op]) {
        *self.only.lock() = ops.iter().copied().collect();
    }

    /// The error injected; defaults to a retryable connection error.
    pub fn set_error(&self, error: MessagingError) {
        *self.error.lock() = Some(error);
    }

    /// Delay added before every call.
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock() = latency;
    }

    /// What the wrapper reports as its resource requirements (instead of the inner's).
    pub fn set_requirements(&self, requirements: ResourceRequirements) {
        *self.requirements.lock() = Some(requirements);
    }

    /// Calls made to the wrapper.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls that reached the wrapped service (not failed by injection).
    pub fn reached(&self) -> u64 {
        self.reached.load(Ordering::SeqCst)
    }

    /// Calls failed by injection.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// The most calls in progress at once since creation.
    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent.load(Ordering::SeqCst)
    }

    fn applies_to(&self, op: Op) -> bool {
        let only = self.only.lock();
        only.is_empty() || only.contains(&op)
    }

    fn should_fail(&self, op: Op) -> bool {
        if !self.applies_to(op) {
            return false;
        }
        if self.failing.load(Ordering::SeqCst) {
            return true;
        }
        self.fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    fn error(&self, provider: ProviderKind, op: Op) -> MessagingError {
        self.error
            .lock()
            .clone()
            .unwrap_or(MessagingError::Connection {
                provider,
                message: format!("injected fault during {op}"),
            })
    }
}

/// Decrements the in-progress count when a call ends, even if cancelled.
struct InProgress<'a>(&'a FaultControl);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.concurrent.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Injects the faults its [`FaultControl`] commands into every guarded call (waits and
/// shutdown pass untouched) before it reaches the service below.
pub struct FaultLayer {
    control: Arc<FaultControl>,
}

impl FaultLayer {
    pub fn new(control: Arc<FaultControl>) -> Self {
        FaultLayer { control }
    }

    /// The shared control handle.
    pub fn control(&self) -> Arc<FaultControl> {
        self.control.clone()
    }
}

impl Layer for FaultLayer {
    fn call(&self, request: Request<'_>, next: Next<'_>) -> impl LayerFuture {
        async move {
            let op = request.op();
            if !op.is_guarded() {
                return next.run(request).await;
            }
            let c = &self.control;
            c.calls.fetch_add(1, Ordering::SeqCst);
            let now = c.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
            c.max_concurrent.fetch_max(now, Ordering::SeqCst);
            let _in_progress = InProgress(c);
            let latency = *c.latency.lock();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if c.should_fail(op) {
                c.injected.fetch_add(1, Ordering::SeqCst);
                return Err(c.error(next.service().provider(), op));
            }
            c.reached.fetch_add(1, Ordering::SeqCst);
            next.run(request).await
        }
    }

    /// A native stream's deliveries are its receives: a fault commanded for
    /// [`Op::Receive`] is yielded as the stream's next item, before it pulls a delivery.
    fn stream(&self, info: &StreamInfo<'_>, stream: MessageStream) -> MessageStream {
        Box::pin(FaultyStream {
            inner: stream,
            control: self.control.clone(),
            provider: info.provider,
            checked: false,
        })
    }

    fn requirements(&self, next: Next<'_>) -> ResourceRequirements {
        self.control
            .requirements
            .lock()
            .clone()
            .unwrap_or_else(|| next.service().resource_requirements())
    }
}

/// A native consumer stream under a [`FaultLayer`].
struct FaultyStream {
    inner: MessageStream,
    control: Arc<FaultControl>,
    provider: ProviderKind,
    /// Whether the fault check for the item being waited on was made (once per item, not once
    /// per poll, so a pending stream does not use up commanded faults).
    checked: bool,
}

impl Stream for FaultyStream {
    type Item = crate::error::Result<ReceivedMessage>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if !self.checked {
            let c = &self.control;
            c.calls.fetch_add(1, Ordering::SeqCst);
            if c.should_fail(Op::Receive) {
                c.injected.fetch_add(1, Ordering::SeqCst);
                let error = c.error(self.provider, Op::Receive);
                return Poll::Ready(Some(Err(error)));
            }
            c.reached.fetch_add(1, Ordering::SeqCst);
            self.checked = true;
        }
        let item = ready!(self.inner.as_mut().poll_next(cx));
        self.checked = false;
        Poll::Ready(item)
    }
}

/// A service with a [`FaultLayer`] on top.
pub type FaultInjectingService = Layered<FaultLayer>;

impl FaultInjectingService {
    pub fn new(inner: Arc<dyn MessagingService>) -> Self {
        Self::with_control(inner, FaultControl::new())
    }

    pub fn with_control(inner: Arc<dyn MessagingService>, control: Arc<FaultControl>) -> Self {
        Layered::wrap(inner, FaultLayer::new(control))
    }
}
