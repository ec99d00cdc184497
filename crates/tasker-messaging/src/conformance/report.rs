//! The suite's result: one line per case (passed, skipped with the capability, failed with
//! why) and the counts.

use std::fmt;
use std::time::Duration;

use crate::service::Capability;

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
