//! `tasker-mq send <queue> <payload>`.

use std::io::Read;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use tasker_messaging::{CorrelationId, OutgoingMessage};

use crate::provider::{queue_name, GlobalOpts};

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Queue name.
    pub queue: String,
    /// Payload, sent as its UTF-8 bytes; `-` reads it from stdin.
    pub payload: String,
    /// Correlation id (a UUID) carried as metadata with every message sent.
    #[arg(long, value_name = "UUID")]
    pub correlation_id: Option<CorrelationId>,
    /// Not receivable before this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub delay_ms: u64,
    /// Send this many copies (each with its own message id), in batches.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Create the queue first if it does not exist (needed with the in-memory provider,
    /// whose queues live only as long as this command).
    #[arg(long)]
    pub create: bool,
}

pub async fn run(global: &GlobalOpts, args: SendArgs) -> anyhow::Result<()> {
    let queue = queue_name(&args.queue)?;
    let payload = if args.payload == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the payload from stdin")?;
        Bytes::from(buf)
    } else {
        Bytes::from(args.payload.into_bytes())
    };
    let (_, service) = global.connect().await?;
    if args.create {
        service
            .create_queue(&queue)
            .await
            .with_context(|| format!("creating queue {queue}"))?;
    }
    let make = || {
        let mut m =
            OutgoingMessage::new(payload.clone()).with_delay(Duration::from_millis(args.delay_ms));
        if let Some(c) = args.correlation_id {
            m = m.with_correlation_id(c);
        }
        m
    };
    if args.count == 1 {
        let id = service
            .send(&queue, make())
            .await
            .with_context(|| format!("sending to {queue}"))?;
        outln!("{id}")?;
        return Ok(());
    }
    let chunk = service.capabilities().max_batch_size.clamp(1, 100) as u64;
    let mut left = args.count;
    while left > 0 {
        let n = left.min(chunk);
        let batch = (0..n).map(|_| make()).collect();
        let ids = service.send_batch(&queue, batch).await.with_context(|| {
            format!(
                "sending to {queue} ({} of {} sent)",
                args.count - left,
                args.count
            )
        })?;
        for id in ids {
            outln!("{id}")?;
        }
        left -= n;
    }
    Ok(())
}
