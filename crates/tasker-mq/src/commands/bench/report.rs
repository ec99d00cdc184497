//! The bench's report: what `--json` prints and the table drawn from it.

use serde::Serialize;
use tasker_messaging::ProviderKind;

use super::Step;
use crate::table;

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub provider: ProviderKind,
    pub messages: u64,
    pub tasks: u64,
    pub batch_size: u64,
    pub latency_samples: u64,
    pub payload_bytes: usize,
    pub steps: Vec<StepReport>,
}

#[derive(Debug, Serialize)]
pub struct StepReport {
    pub step: Step,
    pub description: String,
    pub messages: u64,
    pub seconds: f64,
    pub msg_per_sec: f64,
    /// What p50/p99/max time.
    pub timed: &'static str,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub raw: Option<RawReport>,
}

#[derive(Debug, Serialize)]
pub struct RawReport {
    pub client: String,
    pub msg_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Provider throughput over raw throughput.
    pub throughput_ratio: f64,
}

pub fn render(report: &BenchReport) -> String {
    let mut out = format!(
        "provider {}  messages {}  tasks {}  batch {}  payload {} bytes  latency samples {}\n\n",
        report.provider,
        report.messages,
        report.tasks,
        report.batch_size,
        report.payload_bytes,
        report.latency_samples
    );
    let has_raw = report.steps.iter().any(|s| s.raw.is_some());
    let mut header = vec!["step", "what", "msg/s", "p50", "p99", "max", "p50/p99 time"];
    if has_raw {
        header.extend(["raw msg/s", "raw p50", "ratio"]);
    }
    let rows: Vec<Vec<String>> = report
        .steps
        .iter()
        .map(|s| {
            let mut row = vec![
                s.step.name().to_owned(),
                s.description.clone(),
                thousands(s.msg_per_sec),
                duration_ms(s.p50_ms),
                duration_ms(s.p99_ms),
                duration_ms(s.max_ms),
                s.timed.to_owned(),
            ];
            if has_raw {
                match &s.raw {
                    Some(r) => row.extend([
                        thousands(r.msg_per_sec),
                        duration_ms(r.p50_ms),
                        format!("{:.2}x", r.throughput_ratio),
                    ]),
                    None => row.extend(["-".into(), "-".into(), "-".into()]),
                }
            }
            row
        })
        .collect();
    out.push_str(&table::render(&header, &rows));
    out
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds, shown in µs below 1 ms so fast providers do not print zeros.
fn duration_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.1} µs", ms * 1000.0)
    } else {
        format!("{ms:.2} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_for_the_table() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(duration_ms(0.0123), "12.3 µs");
        assert_eq!(duration_ms(2.5), "2.50 ms");
    }
}
