//! `tasker-mq queue create|stats|purge|delete <queue>`.

use anyhow::Context;
use clap::{Args, Subcommand};
use tasker_messaging::{QueueOptions, QueueStats};

use crate::provider::{queue_name, GlobalOpts};
use crate::table;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create the queue and its dead-letter queue (idempotent).
    Create(CreateArgs),
    /// Show message counts and the oldest message's age.
    Stats(StatsArgs),
    /// Remove every message (not the dead letters); prints how many.
    Purge(QueueArg),
    /// Remove the queue, its messages and its dead-letter queue.
    Delete(QueueArg),
}

#[derive(Debug, Args)]
pub struct QueueArg {
    /// Queue name: 1-47 characters of a-z, 0-9 and _, starting with a letter.
    pub queue: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Queue name: 1-47 characters of a-z, 0-9 and _, starting with a letter.
    pub queue: String,
    /// Receipts before a message moves to the dead-letter queue (0 disables it). Default:
    /// queues.max_receive_count of the configuration.
    #[arg(long, value_name = "N")]
    pub max_receive_count: Option<u32>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Queue name.
    pub queue: String,
    /// Print the statistics as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(global: &GlobalOpts, command: QueueCommand) -> anyhow::Result<()> {
    match command {
        QueueCommand::Create(args) => {
            let queue = queue_name(&args.queue)?;
            let (_, service) = global.connect().await?;
            let options = QueueOptions {
                max_receive_count: args.max_receive_count,
            };
            service
                .create_queue_with(&queue, &options)
                .await
                .with_context(|| format!("creating queue {queue}"))?;
            outln!("created {queue}")?;
        }
        QueueCommand::Stats(args) => {
            let queue = queue_name(&args.queue)?;
            let (_, service) = global.connect().await?;
            let stats = service
                .get_queue_stats(&queue)
                .await
                .with_context(|| format!("reading stats of {queue}"))?;
            if args.json {
                outln!("{}", serde_json::to_string_pretty(&stats)?)?;
            } else {
                out!("{}", stats_table(&stats))?;
            }
        }
        QueueCommand::Purge(args) => {
            let queue = queue_name(&args.queue)?;
            let (_, service) = global.connect().await?;
            let removed = service
                .purge_queue(&queue)
                .await
                .with_context(|| format!("purging {queue}"))?;
            outln!("purged {removed} messages from {queue}")?;
        }
        QueueCommand::Delete(args) => {
            let queue = queue_name(&args.queue)?;
            let (_, service) = global.connect().await?;
            service
                .delete_queue(&queue)
                .await
                .with_context(|| format!("deleting {queue}"))?;
            outln!("deleted {queue}")?;
        }
    }
    Ok(())
}

fn stats_table(stats: &QueueStats) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "n/a".to_owned(), |v| v.to_string());
    let rows = vec![
        vec!["queue".into(), stats.queue_name.to_string()],
        vec!["visible".into(), stats.message_count.to_string()],
        vec!["in flight".into(), opt(stats.in_flight_count)],
        vec!["delayed".into(), opt(stats.delayed_count)],
        vec!["dead letters".into(), opt(stats.dead_letter_count)],
        vec![
            "oldest age (s)".into(),
            stats
                .oldest_message_age_seconds
                .map_or_else(|| "n/a".to_owned(), |s| format!("{s:.3}")),
        ],
    ];
    table::render(&["stat", "value"], &rows)
}
