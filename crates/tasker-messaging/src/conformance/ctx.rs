//! What a case gets (the service, the factory, a time unit, its own queues), the one
//! `eventually`, and the small error helpers every case uses.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Hooks, Outcome, ProviderFactory};
use crate::error::MessagingError;
use crate::queue_name::QueueName;
use crate::service::MessagingService;

/// What a case gets: the service, the factory (for a second receiver), a time unit suited to
/// the provider's timer resolution, and queue names of its own.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub service: Arc<dyn MessagingService>,
    pub factory: ProviderFactory,
    /// The shortest lease or delay the case uses: long enough for the provider's timers to
    /// tell apart, short enough to keep the suite quick.
    pub unit: Duration,
    /// What the instantiation gives besides the factory (wrong-password service, ...).
    pub hooks: Arc<Hooks>,
    case_id: &'static str,
    queues: Arc<parking_lot::Mutex<Vec<QueueName>>>,
    /// Parts that could not be checked, and why (see [`Ctx::timed_runs`]).
    inconclusive: Arc<parking_lot::Mutex<Vec<String>>>,
    not_applicable: Arc<parking_lot::Mutex<Option<String>>>,
}

/// How one run of a timing-sensitive check ended when it did not fail.
pub(crate) enum Timing {
    Checked,
    /// The scheduler was too slow to reach the window the check needs; why.
    Inconclusive(String),
}

impl Ctx {
    pub(super) fn new(
        service: Arc<dyn MessagingService>,
        factory: ProviderFactory,
        hooks: Arc<Hooks>,
        case_id: &'static str,
    ) -> Self {
        let resolution = service.capabilities().timer_resolution;
        let unit = resolution.max(Duration::from_millis(200));
        Ctx {
            service,
            factory,
            unit,
            hooks,
            case_id,
            queues: Arc::new(parking_lot::Mutex::new(Vec::new())),
            inconclusive: Arc::new(parking_lot::Mutex::new(Vec::new())),
            not_applicable: Arc::new(parking_lot::Mutex::new(None)),
        }
    }

    /// How a case that returned `Ok` ended: passed, inconclusive or not applicable.
    pub(super) fn verdict(&self) -> Outcome {
        if let Some(why) = self.not_applicable.lock().clone() {
            return Outcome::NotApplicable(why);
        }
        let inconclusive = self.inconclusive.lock();
        if inconclusive.is_empty() {
            Outcome::Passed
        } else {
            Outcome::Inconclusive(format!("INCONCLUSIVE: {}", inconclusive.join("; ")))
        }
    }

    /// Marks the case as not applicable to this provider (it returns `Ok` right after).
    pub fn not_applicable(&self, why: impl Into<String>) {
        *self.not_applicable.lock() = Some(why.into());
    }

    /// Runs a timing-sensitive check three times, one after the other. A run that fails
    /// fails the case; a run the scheduler made uncheckable is reported as inconclusive, and
    /// more than one such run in three fails the case (a check that is mostly skipped
    /// proves nothing).
    pub async fn timed_runs<F, Fut>(
        &self,
        what: &str,
        mut run: F,
    ) -> std::result::Result<(), String>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = std::result::Result<Timing, String>>,
    {
        const RUNS: u32 = 3;
        let mut uncheckable = Vec::new();
        for n in 0..RUNS {
            if let Timing::Inconclusive(why) = run(n).await? {
                uncheckable.push(why);
            }
        }
        match uncheckable.len() {
            0 => Ok(()),
            1 => {
                self.inconclusive.lock().push(format!(
                    "{what}: 1 of {RUNS} runs could not be checked ({})",
                    uncheckable[0]
                ));
                Ok(())
            }
            k => Err(format!(
                "{what}: {k} of {RUNS} runs could not be checked, the scheduler was too slow ({})",
                uncheckable.join("; ")
            )),
        }
    }

    /// A fresh queue name unique to this run and case (created by the caller).
    pub fn queue_name(&self, tag: &str) -> QueueName {
        let case: String = self
            .case_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let name = QueueName::new(format!("cf_{case}_{tag}_{suffix}"))
            .expect("conformance queue names are valid");
        self.queues.lock().push(name.clone());
        name
    }

    /// A new queue with the configured defaults.
    pub async fn queue(&self, tag: &str) -> std::result::Result<QueueName, String> {
        let q = self.queue_name(tag);
        self.service.create_queue(&q).await.ctx("create_queue")?;
        Ok(q)
    }

    pub(super) async fn cleanup(&self) {
        let queues: Vec<_> = self.queues.lock().drain(..).collect();
        for q in queues {
            let _ = self.service.delete_queue(&q).await;
        }
    }

    /// Polls `probe` until it returns `Some`, up to `within`; the pause between probes grows
    /// to a tenth of a unit, so the suite itself never spins.
    pub async fn eventually<T, F, Fut>(
        &self,
        what: &str,
        within: Duration,
        mut probe: F,
    ) -> std::result::Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<Option<T>, String>>,
    {
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(v) = probe().await? {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(format!("{what}: not observed within {within:?}"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2)
                .min(self.unit / 10)
                .max(Duration::from_millis(5));
        }
    }

    /// Another instance from the factory: its own connection where the provider has them.
    pub async fn connect(&self) -> std::result::Result<Arc<dyn MessagingService>, String> {
        (self.factory)()
            .await
            .map_err(|e| format!("factory (another connection) failed: {e}"))
    }

    /// Disconnects an instance from [`Ctx::connect`] as a crashed process would: shuts it
    /// down and drops it. A factory that hands out one shared instance (an embedded provider,
    /// a stack around it) has no connection to close: that instance is only dropped, since
    /// every other case uses it too.
    pub async fn disconnect(&self, service: Arc<dyn MessagingService>) {
        let own = Arc::as_ptr(&service) as *const () == Arc::as_ptr(&self.service) as *const ();
        if !own {
            let _ = service.shutdown().await;
        }
        drop(service);
    }

    /// The margin allowed for a timer to fire late.
    pub fn slack(&self) -> Duration {
        self.unit * 4 + Duration::from_secs(2)
    }
}

/// Turns a provider error into a case failure naming the operation.
pub(crate) trait Context<T> {
    fn ctx(self, operation: &str) -> std::result::Result<T, String>;
}

impl<T> Context<T> for std::result::Result<T, MessagingError> {
    fn ctx(self, operation: &str) -> std::result::Result<T, String> {
        self.map_err(|e| format!("{operation} failed: {e}"))
    }
}

/// Fails the case with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
pub(crate) use ensure;
