//! Global backpressure with hysteresis (the plan's `GlobalBackpressureController`).
//!
//! Pressure is the highest of four ratios, each clamped to 0..=1: queue depth over
//! `max_queue_depth`, in-flight over `max_in_flight`, error rate over `max_error_rate`, latency
//! over `max_latency_ms`. The level (Normal, Elevated, Critical) rises one step when pressure
//! reaches the next level's `*_enter` threshold and falls one step when pressure drops below the
//! current level's `*_exit` threshold. Enter above exit means a signal hovering near one
//! threshold does not flap, and `min_dwell_ms` bounds changes to one per dwell period whatever
//! the signal does.
//!
//! Consumers read the level (lock-free) and shrink their batches with
//! [`GlobalBackpressureController::batch_size_for`] and stretch their polling with
//! [`GlobalBackpressureController::poll_interval_for`], or subscribe to changes with
//! [`GlobalBackpressureController::subscribe`]. [`BackpressureLayer`] applies the batch size to
//! every `receive` of the service below it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::layer::{Layer, LayerFuture, Next, PgmqRequest, Request, Response};
use super::layered::Layered;
use crate::config::BackpressureConfig;
use crate::service::MessagingService;

/// How hard consumers should back off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum PressureLevel {
    Normal = 0,
    Elevated = 1,
    Critical = 2,
}

impl PressureLevel {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => PressureLevel::Normal,
            1 => PressureLevel::Elevated,
            _ => PressureLevel::Critical,
        }
    }
}

/// One observation of the system.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PressureSample {
    pub queue_depth: u64,
    pub in_flight: u64,
    /// Failed share of recent calls, 0..=1.
    pub error_rate: f64,
    pub latency: Duration,
}

/// What subscribers see.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BackpressureState {
    pub level: PressureLevel,
    /// The pressure of the sample that caused the last update.
    pub pressure: f64,
}

struct Tracking {
    last_change: Option<Instant>,
}

/// The controller: feed it samples, read the level.
pub struct GlobalBackpressureController {
    config: BackpressureConfig,
    level: AtomicU8,
    transitions: AtomicU64,
    tracking: Mutex<Tracking>,
    tx: watch::Sender<BackpressureState>,
}

impl GlobalBackpressureController {
    pub fn new(config: BackpressureConfig) -> Arc<Self> {
        let (tx, _) = watch::channel(BackpressureState {
            level: PressureLevel::Normal,
            pressure: 0.0,
        });
        Arc::new(GlobalBackpressureController {
            config,
            level: AtomicU8::new(PressureLevel::Normal as u8),
            transitions: AtomicU64::new(0),
            tracking: Mutex::new(Tracking { last_change: None }),
            tx,
        })
    }

    pub fn config(&self) -> &BackpressureConfig {
        &self.config
    }

    /// The pressure `sample` represents, 0..=1.
    pub fn pressure(&self, sample: &PressureSample) -> f64 {
        let c = &self.config;
        let ratios = [
            sample.queue_depth as f64 / c.max_queue_depth as f64,
            sample.in_flight as f64 / c.max_in_flight as f64,
            sample.error_rate / c.max_error_rate,
            sample.latency.as_secs_f64() * 1_000.0 / c.max_latency_ms as f64,
        ];
        ratios
            .into_iter()
            .filter(|r| r.is_finite())
            .fold(0.0_f64, f64::max)
            .clamp(0.0, 1.0)
    }

    /// Takes a sample; returns the level after it.
    pub fn update(&self, sample: &PressureSample) -> PressureLevel {
        self.update_pressure(self.pressure(sample))
    }

    /// Takes a pressure value directly (0..=1); returns the level after it.
    pub fn update_pressure(&self, pressure: f64) -> PressureLevel {
        let c = &self.config;
        let now = Instant::now();
        let mut tracking = self.tracking.lock();
        let current = self.level();
        let wanted = match current {
            PressureLevel::Normal if pressure >= c.elevated_enter => PressureLevel::Elevated,
            PressureLevel::Elevated if pressure >= c.critical_enter => PressureLevel::Critical,
            PressureLevel::Elevated if pressure < c.elevated_exit => PressureLevel::Normal,
            PressureLevel::Critical if pressure < c.critical_exit => PressureLevel::Elevated,
            other => other,
        };
        let dwelt = tracking.last_change.is_none_or(|t| {
            now.saturating_duration_since(t) >= Duration::from_millis(c.min_dwell_ms)
        });
        let level = if wanted != current && dwelt {
            tracking.last_change = Some(now);
            self.level.store(wanted as u8, Ordering::Release);
            self.transitions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(from = ?current, to = ?wanted, pressure, "backpressure level change");
            wanted
        } else {
            current
        };
        drop(tracking);
        self.tx.send_if_modified(|s| {
            let changed = s.level != level;
            *s = BackpressureState { level, pressure };
            changed
        });
        level
    }

    /// The current level (one atomic load).
    pub fn level(&self) -> PressureLevel {
        PressureLevel::from_u8(self.level.load(Ordering::Acquire))
    }

    /// Level changes since creation.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// Notified on every level change.
    pub fn subscribe(&self) -> watch::Receiver<BackpressureState> {
        self.tx.subscribe()
    }

    fn factor(&self) -> f64 {
        match self.level() {
            PressureLevel::Normal => 1.0,
            PressureLevel::Elevated => self.config.elevated_batch_factor,
            PressureLevel::Critical => self.config.critical_batch_factor,
        }
    }

    /// The batch size to use instead of `base`: at least 1, except that 0 stays 0 (a receive
    /// of nothing must return nothing).
    pub fn batch_size_for(&self, base: usize) -> usize {
        if base == 0 {
            return 0;
        }
        ((base as f64 * self.factor()).floor() as usize).clamp(1, base.max(1))
    }

    /// The pause between polls to use instead of `base` (stretched by the inverse factor).
    pub fn poll_interval_for(&self, base: Duration) -> Duration {
        let f = self.factor().max(0.01);
        base.mul_f64(1.0 / f)
    }
}

/// Shrinks every `receive` (and PGMQ `read_batch`) to the controller's batch size, and under
/// pressure makes `wait_for_messages` sleep the stretched interval instead of waking early.
pub struct BackpressureLayer {
    controller: Arc<GlobalBackpressureController>,
}

impl BackpressureLayer {
    pub fn new(controller: Arc<GlobalBackpressureController>) -> Self {
        BackpressureLayer { controller }
    }

    pub fn controller(&self) -> &Arc<GlobalBackpressureController> {
        &self.controller
    }
}

impl Layer for BackpressureLayer {
    fn call(&self, mut request: Request<'_>, next: Next<'_>) -> impl LayerFuture {
        async move {
            match &mut request {
                Request::Receive { max_messages, .. } => {
                    *max_messages = self.controller.batch_size_for(*max_messages);
                }
                Request::Pgmq(PgmqRequest::ReadBatch { limit, .. }) => {
                    *limit = self.controller.batch_size_for(*limit);
                }
                Request::WaitForMessages { max_wait, .. }
                    if self.controller.level() != PressureLevel::Normal =>
                {
                    // Under pressure, poll less often: sleep the stretched interval, do not
                    // wake early.
                    tokio::time::sleep(self.controller.poll_interval_for(*max_wait)).await;
                    return Ok(Response::Done);
                }
                _ => {}
            }
            next.run(request).await
        }
    }
}

/// A service with a [`BackpressureLayer`] on top.
pub type BackpressureService = Layered<BackpressureLayer>;

impl BackpressureService {
    pub fn new(
        inner: Arc<dyn MessagingService>,
        controller: Arc<GlobalBackpressureController>,
    ) -> Self {
        Layered::wrap(inner, BackpressureLayer::new(controller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::OutgoingMessage;
    use crate::providers::in_memory::InMemoryMessageService;
    use crate::queue_name::QueueName;

    fn config(min_dwell_ms: u64) -> BackpressureConfig {
        BackpressureConfig {
            min_dwell_ms,
            ..Default::default()
        }
    }

    /// Feeds `signal(t)` every 50 ms for `secs` seconds of paused time; returns the changes.
    async fn drive(
        c: &GlobalBackpressureController,
        secs: u64,
        signal: impl Fn(u64) -> f64,
    ) -> u64 {
        let before = c.transitions();
        for tick in 0..secs * 20 {
            c.update_pressure(signal(tick));
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        c.transitions() - before
    }

    #[tokio::test(start_paused = true)]
    async fn oscillating_signal_changes_state_a_bounded_number_of_times() {
        // A square wave between 0.2 and 0.95 flipping every 100 ms, for 60 s: 600 flips.
        let square = |tick: u64| if (tick / 2) % 2 == 0 { 0.95 } else { 0.2 };
        let c = GlobalBackpressureController::new(config(5_000));
        let changes = drive(&c, 60, square).await;
        assert!(changes >= 2, "it must still react: {changes}");
        assert!(
            changes <= 60_000 / 5_000 + 1,
            "{changes} changes in 60 s with a 5 s dwell"
        );

        // The same signal without dwell flaps on nearly every flip: the dwell is what bounds it.
        let undamped = GlobalBackpressureController::new(config(0));
        let flaps = drive(&undamped, 60, square).await;
        assert!(flaps >= 1_000, "{flaps}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_inside_the_hysteresis_band_never_flaps() {
        let c = GlobalBackpressureController::new(config(0));
        assert_eq!(c.update_pressure(0.75), PressureLevel::Elevated);
        // Between elevated_exit 0.5 and critical_enter 0.9: stays elevated.
        let wobble = |tick: u64| if tick % 2 == 0 { 0.55 } else { 0.85 };
        assert_eq!(drive(&c, 30, wobble).await, 0);
        assert_eq!(c.level(), PressureLevel::Elevated);
        assert_eq!(c.update_pressure(0.49), PressureLevel::Normal);
    }

    #[tokio::test(start_paused = true)]
    async fn levels_move_one_step_and_respect_the_dwell() {
        let c = GlobalBackpressureController::new(config(1_000));
        let mut rx = c.subscribe();
        let sample = PressureSample {
            queue_depth: 10_000,
            ..Default::default()
        };
        assert_eq!(c.pressure(&sample), 1.0);
        assert_eq!(
            c.update(&sample),
            PressureLevel::Elevated,
            "one step at a time"
        );
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().level, PressureLevel::Elevated);
        assert_eq!(c.update(&sample), PressureLevel::Elevated, "dwell not over");
        tokio::time::advance(Duration::from_millis(1_000)).await;
        assert_eq!(c.update(&sample), PressureLevel::Critical);
        assert_eq!(c.batch_size_for(100), 10);
        assert_eq!(c.batch_size_for(5), 1, "never zero");
        assert_eq!(c.batch_size_for(0), 0, "nothing stays nothing");
        assert_eq!(
            c.poll_interval_for(Duration::from_millis(100)),
            Duration::from_secs(1)
        );
        let latency = PressureSample {
            latency: Duration::from_millis(800),
            ..Default::default()
        };
        assert!((c.pressure(&latency) - 0.8).abs() < 1e-9);
        tokio::time::advance(Duration::from_millis(1_000)).await;
        assert_eq!(
            c.update(&latency),
            PressureLevel::Critical,
            "0.8 is above critical_exit"
        );
        let errors = PressureSample {
            error_rate: 0.25,
            ..Default::default()
        };
        assert_eq!(c.update(&errors), PressureLevel::Elevated);
        assert_eq!(c.batch_size_for(100), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wrapper_shrinks_receive_batches_under_pressure() {
        let mem: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
        let queue = QueueName::new("bp_queue").unwrap();
        mem.create_queue(&queue).await.unwrap();
        let batch = (0..100).map(|i| OutgoingMessage::new(vec![i])).collect();
        mem.send_batch(&queue, batch).await.unwrap();
        let c = GlobalBackpressureController::new(config(0));
        let svc = BackpressureService::new(mem, c.clone());
        let vt = Duration::from_secs(60);
        assert_eq!(svc.receive(&queue, 20, vt).await.unwrap().len(), 20);
        c.update_pressure(0.8);
        assert_eq!(svc.receive(&queue, 20, vt).await.unwrap().len(), 10);
        c.update_pressure(1.0);
        assert_eq!(svc.receive(&queue, 20, vt).await.unwrap().len(), 2);
        let start = Instant::now();
        svc.wait_for_messages(&queue, Duration::from_millis(100))
            .await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1),
            "polling stretched tenfold"
        );
    }
}
