//! The one conformance suite every provider instantiates (feature `conformance`).
//!
//! The cases encode `docs/semantics.md`. A case is skipped only when the provider declares a
//! capability it needs absent, and the report says which. Cases run concurrently, each with
//! its own service instance from the factory and its own uniquely named queues, so one
//! server serves the whole suite at once. Stress mode (`CONFORMANCE_PARALLEL=N`) runs every
//! case N times at once, each copy on its own queues and services (the cases one after
//! another); the case fails if any copy fails.
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
//! // Or, to give the suite what some cases need from the instantiation:
//! // Suite::new("pgmq", factory).wrong_password(..).transactional_send(..).run().await
//! // (see `Suite`).
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
use futures::StreamExt;

use crate::error::Result;
use crate::message::{MessageId, OutgoingMessage};
use crate::queue_name::QueueName;
use crate::service::MessagingService;

pub use crate::queue_name::hostile_queue_names;
pub use counting::{CountingService, ReceiveCounter};
pub(crate) use ctx::{ensure, Context, Ctx};
pub use report::{CaseResult, Outcome, SuiteReport};

/// Builds a fresh, initialized service connected to the provider under test.
pub type ProviderFactory =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn MessagingService>>> + Send + Sync>;

/// Sends messages to a queue inside one database transaction of the provider's own and
/// commits it (`send_in_transaction` / `send_batch_in_transaction` for PGMQ): the path
/// capability `transactional_send` promises, which the trait object cannot reach.
pub type TransactionalSend = Arc<
    dyn Fn(QueueName, Vec<OutgoingMessage>) -> BoxFuture<'static, Result<Vec<MessageId>>>
        + Send
        + Sync,
>;

/// How the "no password in any error" case reaches the provider with a wrong password.
#[derive(Clone)]
pub enum Credentials {
    /// `factory` builds a service (initializing it is part of the call) whose URL carries
    /// `password`, a password the server refuses; no error it gives may show `password`.
    WrongPassword {
        factory: ProviderFactory,
        password: String,
    },
    /// The provider has no password to leak; the case is skipped with this reason.
    NoPassword(String),
}

/// One provider's instantiation of the suite: the factory, and what some cases need that
/// the trait object cannot give.
///
/// Without [`Suite::credentials`] the "no password in any error" case fails, except for the
/// in-memory provider (and wrappers around it), which has no password. A provider that
/// declares `transactional_send` must give [`Suite::transactional_send`], or the payload-size
/// case fails.
#[derive(Clone)]
pub struct Suite {
    provider: String,
    factory: ProviderFactory,
    hooks: Arc<Hooks>,
}

/// What a [`Suite`] gives its cases besides the factory.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub credentials: Option<Credentials>,
    pub transactional_send: Option<TransactionalSend>,
}

impl Suite {
    pub fn new(provider: &str, factory: ProviderFactory) -> Self {
        Suite {
            provider: provider.to_owned(),
            factory,
            hooks: Arc::new(Hooks::default()),
        }
    }

    /// How to connect with a wrong password, or why the provider has none.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        Arc::make_mut(&mut self.hooks).credentials = Some(credentials);
        self
    }

    /// The provider's transactional send path (capability `transactional_send`).
    pub fn transactional_send(mut self, send: TransactionalSend) -> Self {
        Arc::make_mut(&mut self.hooks).transactional_send = Some(send);
        self
    }

    /// Runs every case.
    pub async fn run(&self) -> SuiteReport {
        self.run_cases(|_| true).await
    }

    /// Runs the cases whose id `filter` accepts (e.g. while developing a provider), each
    /// `CONFORMANCE_PARALLEL` times at once (default 1).
    pub async fn run_cases(&self, filter: impl Fn(&str) -> bool) -> SuiteReport {
        let parallel = parallel_copies();
        let runs = cases::all()
            .into_iter()
            .filter(|case| filter(case.id))
            .map(|case| async move {
                let start = Instant::now();
                let copies = (0..parallel).map(|_| run_one(&case, self));
                let outcome = merge(futures::future::join_all(copies).await);
                CaseResult {
                    id: case.id,
                    title: case.title,
                    outcome,
                    elapsed: start.elapsed(),
                }
            });
        // One copy each: every case at once. Stress mode: the copies of one case at once,
        // the cases in turn, so a server's connection limit bounds one case's copies rather
        // than N times the whole suite.
        let cases = if parallel == 1 {
            futures::future::join_all(runs).await
        } else {
            futures::stream::iter(runs).then(|run| run).collect().await
        };
        SuiteReport {
            provider: self.provider.clone(),
            parallel,
            cases,
        }
    }
}

/// What a case body returns: `Ok(())` passed, `Err` failed with a message.
pub(crate) type CaseResultInner = std::result::Result<(), String>;

/// Runs every case against the provider `factory` builds.
pub async fn run_suite(provider: &str, factory: ProviderFactory) -> SuiteReport {
    Suite::new(provider, factory).run().await
}

/// Runs the cases whose id `filter` accepts (e.g. while developing a provider).
pub async fn run_cases(
    provider: &str,
    factory: ProviderFactory,
    filter: impl Fn(&str) -> bool,
) -> SuiteReport {
    Suite::new(provider, factory).run_cases(filter).await
}

/// `CONFORMANCE_PARALLEL`: copies of each case run at once (stress mode); 1 when unset.
fn parallel_copies() -> usize {
    match std::env::var("CONFORMANCE_PARALLEL") {
        Ok(n) => n
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .unwrap_or_else(|| panic!("CONFORMANCE_PARALLEL={n:?}: expected a count >= 1")),
        Err(_) => 1,
    }
}

/// One outcome for the copies of a case: the first failure (naming the copy), else an
/// inconclusive copy, else the common outcome.
fn merge(outcomes: Vec<Outcome>) -> Outcome {
    let copies = outcomes.len();
    let tag = |i: usize, why: &str| {
        if copies > 1 {
            format!("copy {} of {copies}: {why}", i + 1)
        } else {
            why.to_owned()
        }
    };
    if let Some((i, Outcome::Failed(why))) = outcomes
        .iter()
        .enumerate()
        .find(|(_, o)| matches!(o, Outcome::Failed(_)))
    {
        return Outcome::Failed(tag(i, why));
    }
    if let Some((i, Outcome::Inconclusive(why))) = outcomes
        .iter()
        .enumerate()
        .find(|(_, o)| matches!(o, Outcome::Inconclusive(_)))
    {
        return Outcome::Inconclusive(tag(i, why));
    }
    outcomes.into_iter().next().unwrap_or(Outcome::Passed)
}

async fn run_one(case: &cases::Case, suite: &Suite) -> Outcome {
    let service = match (suite.factory)().await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("factory failed: {e}")),
    };
    let capabilities = service.capabilities().clone();
    if let Some(missing) = case.needs.iter().find(|cap| !capabilities.supports(**cap)) {
        return Outcome::Skipped(*missing);
    }
    let ctx = Ctx::new(service, suite.factory.clone(), suite.hooks.clone(), case.id);
    // A generous ceiling so a hung backend fails the case instead of the whole run.
    let limit = Duration::from_secs(120) + ctx.unit * 40;
    let result = tokio::time::timeout(limit, (case.run)(ctx.clone())).await;
    ctx.cleanup().await;
    match result {
        Ok(Ok(())) => ctx.verdict(),
        Ok(Err(why)) => Outcome::Failed(why),
        Err(_) => Outcome::Failed(format!("did not finish within {limit:?}")),
    }
}

/// `url` with its password replaced by `password` (percent-encoded as URLs need), for the
/// wrong-password service of [`Credentials::WrongPassword`].
pub fn url_with_password(url: &str, password: &str) -> Result<String> {
    let bad = |why: &str| crate::error::MessagingError::config("url", why.to_owned());
    let mut parsed = url::Url::parse(url).map_err(|_| bad("not a URL"))?;
    parsed
        .set_password(Some(password))
        .map_err(|()| bad("this URL cannot carry a password"))?;
    Ok(parsed.into())
}
