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
mod ctx;
mod report;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use crate::error::Result;
use crate::service::MessagingService;

pub use counting::CountingService;
pub(crate) use ctx::{ensure, Context, Ctx};
pub use report::{CaseResult, Outcome, SuiteReport};

/// Builds a fresh, initialized service connected to the provider under test.
pub type ProviderFactory =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn MessagingService>>> + Send + Sync>;

/// What a case body returns: `Ok(())` passed, `Err` failed with a message.
pub(crate) type CaseResultInner = std::result::Result<(), String>;

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
