//! The suite's result: one line per case (passed, inconclusive with why, skipped with the
//! capability or reason, failed with why) and the counts.

use std::fmt;
use std::time::Duration;

use crate::service::Capability;

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Passed, but a timing-sensitive part could not be checked in one of its runs (the
    /// scheduler was too slow to reach the window it checks). Never counted as passed; more
    /// than one such run in three fails the case.
    Inconclusive(String),
    /// The provider declares this capability absent.
    Skipped(Capability),
    /// The promise has no meaning for this provider (e.g. it has no password), as its
    /// instantiation declares.
    NotApplicable(String),
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
    /// How many copies of each case ran at once (`CONFORMANCE_PARALLEL`, default 1).
    pub parallel: usize,
    pub cases: Vec<CaseResult>,
}

impl SuiteReport {
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Passed))
    }
    pub fn inconclusive(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Inconclusive(_)))
    }
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_) | Outcome::NotApplicable(_)))
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
            // The failures again, in the panic message: CI logs often keep only the tail.
            let failures: Vec<String> = self
                .cases
                .iter()
                .filter_map(|c| match &c.outcome {
                    Outcome::Failed(why) => Some(format!("{}: {why}", c.id)),
                    _ => None,
                })
                .collect();
            panic!(
                "conformance [{}]: {} of {} cases failed: {}",
                self.provider,
                self.failed(),
                self.cases.len(),
                failures.join("; ")
            );
        }
    }
}

impl fmt::Display for SuiteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let copies = if self.parallel > 1 {
            format!(
                ", each run {} times at once on its own queues",
                self.parallel
            )
        } else {
            String::new()
        };
        writeln!(
            f,
            "conformance [{}]: {} cases{copies}",
            self.provider,
            self.cases.len()
        )?;
        for case in &self.cases {
            let (tag, note) = match &case.outcome {
                Outcome::Passed => ("PASS", String::new()),
                Outcome::Inconclusive(why) => ("INCONCLUSIVE", format!(" -- {why}")),
                Outcome::Skipped(cap) => {
                    ("SKIP", format!(" -- skipped: provider declares no {cap}"))
                }
                Outcome::NotApplicable(why) => ("SKIP", format!(" -- skipped: {why}")),
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
            "conformance [{}]: {} passed, {} inconclusive, {} skipped, {} failed",
            self.provider,
            self.passed(),
            self.inconclusive(),
            self.skipped(),
            self.failed()
        )
    }
}
