//! The one conformance suite every provider instantiates (feature `conformance`).
//!
//! The cases encode `docs/semantics.md`. A case is skipped only when the provider declares a
//! capability it needs absent, and the report says which. Cases run concurrently, each with
//! its own service instance from the factory and its own uniquely named queues, so one
//! server serves the whole suite at once.
//!
//! ```no_run
//! # #[cfg(feature = "in-memory")] {
//! use std::sync::Arc;
//! use tasker_messaging::conformance::{run_suite, ProviderFactory};
//! use tasker_messaging::{InMemoryMessageService, MessagingService};
//!
//! # async fn check() {
//! // Every service the factory returns must see the same queues (one server).
//! let shared: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
//! let factory: ProviderFactory = Arc::new(move || {
//!     let svc = shared.clone();
//!     Box::pin(async move { Ok(svc) })
//! });
//! run_suite("in_memory", factory).await.assert_passed();
//! # }
//! # }
//! ```

mod cases;
mod counting;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::error::{MessagingError, Result};
use crate::queue_name::QueueName;
use crate::service::{Capability, MessagingService};

pub use counting::{CountingService, ReceiveCounter};

/// Builds a fresh, initialized service connected to the provider under test.
pub type ProviderFactory =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn MessagingService>>> + Send + Sync>;

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// The provider declares this capability absent.
    Skipped(Capability),
    Failed(String),
}

/// One case's result.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub id: &'static str,
    pub title: &'static str,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

/// The whole suite's result for one provider.
#[derive(Clone, Debug)]
pub struct SuiteReport {
    pub provider: String,
    pub cases: Vec<CaseResult>,
}

impl SuiteReport {
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Passed))
    }
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.outcome)).count()
    }

    /// Prints the report and panics when a case failed.
    pub fn assert_passed(&self) {
        println!("{self}");
        if self.failed() > 0 {
            panic!(
                "conformance [{}]: {} of {} cases failed",
                self.provider,
                self.failed(),
                self.cases.len()
            );
        }
    }
}

impl fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "conformance [{}]: {} cases",
            self.provider,
            self.cases.len()
        )?;
        for case in &self.cases {
            let (tag, note) = match &case.outcome {
                Outcome::Passed => ("PASS", String::new()),
                Outcome::Skipped(cap) => {
                    ("SKIP", format!(" -- skipped: provider declares no {cap}"))
                }
                Outcome::Failed(why) => ("FAIL", format!(" -- {why}")),
            };
            writeln!(
                f,
                "  {tag}  {:<6} {:<68} {:>6.2}s{note}",
                case.id,
                case.title,
                case.elapsed.as_secs_f64()
            )?;
        }
        write!(
            f,
            "conformance [{}]: {} passed, {} skipped, {} failed",
            self.provider,
            self.passed(),
            self.skipped(),
            self.failed()
        )
    }
}

/// What a case body returns: `Ok(())` passed, `Err` failed with a message.
type CaseResultInner = std::result::Result<(), String>;

/// Runs every case against the provider `factory` builds.
pub async fn run_suite(provider: &str, factory: ProviderFactory) -> SuiteReport {
    run_cases(provider, factory, |_| true).await
}

/// Runs the cases whose id `filter` accepts (e.g. while developing a provider).
pub async fn run_cases(
    provider: &str,
    factory: ProviderFactory,
    filter: impl Fn(&str) -> bool,
) -> SuiteReport {
    let runs = cases::all()
        .into_iter()
        .filter(|case| filter(case.id))
        .map(|case| {
            let factory = factory.clone();
            async move {
                let start = Instant::now();
                let outcome = run_one(&case, factory).await;
                CaseResult {
                    id: case.id,
                    title: case.title,
                    outcome,
                    elapsed: start.elapsed(),
                }
            }
        });
    let cases = futures::future::join_all(runs).await;
    SuiteReport {
        provider: provider.to_owned(),
        cases,
    }
}

async fn run_one(case: &cases::Case, factory: ProviderFactory) -> Outcome {
    let service = match factory().await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("factory failed: {e}")),
    };
    let capabilities = service.capabilities().clone();
    if let Some(missing) = case.needs.iter().find(|cap| !capabilities.supports(**cap)) {
        return Outcome::Skipped(*missing);
    }
    let ctx = Ctx::new(service, factory, case.id);
    // A generous ceiling so a hung backend fails the case instead of the whole run.
    let limit = Duration::from_secs(120) + ctx.unit * 40;
    let result = tokio::time::timeout(limit, (case.run)(ctx.clone())).await;
    ctx.cleanup().await;
    match result {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(why)) => Outcome::Failed(why),
        Err(_) => Outcome::Failed(format!("did not finish within {limit:?}")),
    }
}

/// What a case gets: the service, the factory (for a second receiver), a time unit suited to
/// the provider's timer resolution, and queue names of its own.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub service: Arc<dyn MessagingService>,
    pub factory: ProviderFactory,
    /// The shortest lease or delay the case uses: long enough for the provider's timers to
    /// tell apart, short enough to keep the suite quick.
    pub unit: Duration,
    case_id: &'static str,
    queues: Arc<parking_lot::Mutex<Vec<QueueName>>>,
}

impl Ctx {
    fn new(
        service: Arc<dyn MessagingService>,
        factory: ProviderFactory,
        case_id: &'static str,
    ) -> Self {
        let resolution = service.capabilities().timer_resolution;
        let unit = resolution.max(Duration::from_millis(200));
        Ctx {
            service,
            factory,
            unit,
            case_id,
            queues: Arc::new(parking_lot::Mutex::new(Vec::new())),
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

    async fn cleanup(&self) {
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
