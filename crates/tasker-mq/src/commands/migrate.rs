//! `tasker-mq migrate --from <config> --to <config> --queue <q>`: moves a queue's messages
//! between two providers with message ids and correlation ids preserved and nothing lost
//! (at-least-once: each batch is sent to the target before it is deleted from the source).
//!
//! The two configuration files are read as written, without environment overrides: one set of
//! `DATABASE_URL` / `TASKER_MQ_*` variables cannot describe two providers at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tasker_messaging::resilience::{migrate_queue, MigrationOptions, MigrationReport};
use tasker_messaging::{build_service, MessagingConfig, MessagingService, ProviderKind, QueueName};

/// Arguments of `tasker-mq migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// Configuration file (TOML) of the provider to move messages from.
    #[arg(long, value_name = "CONFIG")]
    pub from: PathBuf,
    /// Configuration file (TOML) of the provider to move messages to.
    #[arg(long, value_name = "CONFIG")]
    pub to: PathBuf,
    /// The queue to migrate.
    #[arg(long)]
    pub queue: String,
    /// The queue's name on the target (default: the same name).
    #[arg(long)]
    pub target_queue: Option<String>,
    /// Messages per round trip.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Lease held on source messages while a batch is copied, in seconds.
    #[arg(long, default_value_t = 60)]
    pub visibility_timeout_secs: u64,
    /// Stop after this many messages.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Print the final report as JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

impl MigrateArgs {
    fn options(&self) -> anyhow::Result<MigrationOptions> {
        anyhow::ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        anyhow::ensure!(
            self.visibility_timeout_secs > 0,
            "--visibility-timeout-secs must be at least 1"
        );
        let target_queue = match &self.target_queue {
            Some(q) => Some(QueueName::new(q).context("--target-queue")?),
            None => None,
        };
        Ok(MigrationOptions {
            batch_size: self.batch_size,
            visibility_timeout: Duration::from_secs(self.visibility_timeout_secs),
            create_target_queue: true,
            max_messages: self.max_messages,
            target_queue,
        })
    }
}

/// Reads a configuration file without environment overrides.
pub fn load_config(path: &Path) -> anyhow::Result<MessagingConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading configuration {}", path.display()))?;
    MessagingConfig::from_toml_str(&text)
        .with_context(|| format!("configuration {}", path.display()))
}

/// Runs the command: builds both providers, migrates, prints the final count.
pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let queue = QueueName::new(&args.queue).context("--queue")?;
    let options = args.options()?;
    let from_config = load_config(&args.from)?;
    let to_config = load_config(&args.to)?;
    // The embedded provider lives only inside this process: as a target it would take the
    // messages out of the source and drop them when the command exits; as a source it is empty.
    for (flag, config) in [("--to", &to_config), ("--from", &from_config)] {
        anyhow::ensure!(
            config.provider != ProviderKind::InMemory,
            "{flag} names the in_memory provider, which lives only inside this process: \
             migrating {} it would {}",
            if flag == "--to" { "to" } else { "from" },
            if flag == "--to" {
                "lose every message when the command exits"
            } else {
                "find nothing"
            }
        );
    }
    let from = build_service(&from_config)
        .await
        .with_context(|| format!("starting the source provider {}", from_config.provider))?;
    let to = build_service(&to_config)
        .await
        .with_context(|| format!("starting the target provider {}", to_config.provider))?;
    let report = run_with_services(from.clone(), to.clone(), &queue, &options, true).await;
    let _ = from.shutdown().await;
    let _ = to.shutdown().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}",
            summary(&report, from.provider().as_str(), to.provider().as_str())
        );
    }
    Ok(())
}

/// Migrates between two running services, drawing a progress bar when `show_progress`.
pub async fn run_with_services(
    from: Arc<dyn MessagingService>,
    to: Arc<dyn MessagingService>,
    queue: &QueueName,
    options: &MigrationOptions,
    show_progress: bool,
) -> anyhow::Result<MigrationReport> {
    let bar = if show_progress {
        ProgressBar::no_length()
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .context("progress bar template")?,
    );
    bar.set_message(format!("migrating {queue}"));
    let result = migrate_queue(&*from, &*to, queue, options, |p| {
        if let (Some(estimate), None) = (p.initial_estimate, bar.length()) {
            bar.set_length(estimate);
        }
        // More than estimated (sends during the migration): keep the bar honest.
        if bar.length().is_some_and(|len| p.moved > len) {
            bar.set_length(p.moved);
        }
        bar.set_position(p.moved);
    })
    .await;
    match &result {
        Ok(report) => bar.finish_with_message(format!("migrated {queue}: {}", report.moved)),
        Err(_) => bar.abandon_with_message(format!("migration of {queue} stopped")),
    }
    result
        .with_context(|| format!("migrating queue {queue} (a re-run continues where this stopped)"))
}

/// The final line printed.
pub fn summary(report: &MigrationReport, from: &str, to: &str) -> String {
    let mut line = format!(
        "migrated {} messages from {from}:{} to {to}:{} in {} batches ({} ms)",
        report.moved, report.queue, report.target_queue, report.batches, report.elapsed_ms
    );
    if let Some(left) = report.left_in_source.filter(|&n| n > 0) {
        line.push_str(&format!(
            "; {left} still in the source (in flight or delayed)"
        ));
    }
    if report.possible_duplicates > 0 {
        line.push_str(&format!(
            "; {} may have been delivered twice (same message ids)",
            report.possible_duplicates
        ));
    }
    line
}
