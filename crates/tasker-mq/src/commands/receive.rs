//! `tasker-mq receive <queue>`.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use tasker_messaging::ReceivedMessage;

use crate::provider::{queue_name, GlobalOpts};
use crate::table;

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// Queue name.
    pub queue: String,
    /// Most messages to receive.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max: usize,
    /// Lease length: the messages stay invisible to other receivers this long unless acked.
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub visibility_timeout_secs: u64,
    /// Acknowledge (delete) the received messages.
    #[arg(long)]
    pub ack: bool,
    /// Create the queue first if it does not exist.
    #[arg(long)]
    pub create: bool,
    /// Print the messages as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Shown<'a> {
    message_id: String,
    correlation_id: Option<String>,
    receive_count: u32,
    receipt: String,
    enqueued_at: String,
    /// The payload as UTF-8 (invalid bytes replaced).
    payload: std::borrow::Cow<'a, str>,
    acked: bool,
}

pub async fn run(global: &GlobalOpts, args: ReceiveArgs) -> anyhow::Result<()> {
    let queue = queue_name(&args.queue)?;
    let (_, service) = global.connect().await?;
    if args.create {
        service
            .create_queue(&queue)
            .await
            .with_context(|| format!("creating queue {queue}"))?;
    }
    let messages = service
        .receive(
            &queue,
            args.max,
            Duration::from_secs(args.visibility_timeout_secs),
        )
        .await
        .with_context(|| format!("receiving from {queue}"))?;
    if args.ack && !messages.is_empty() {
        let receipts: Vec<_> = messages.iter().map(|m| m.receipt().clone()).collect();
        let outcome = service
            .delete_messages(&queue, &receipts)
            .await
            .with_context(|| format!("acknowledging messages on {queue}"))?;
        if let Some((receipt, error)) = outcome.rejected.first() {
            anyhow::bail!(
                "{} of {} acks refused; first: receipt {receipt}: {error}",
                outcome.rejected.len(),
                receipts.len()
            );
        }
    }
    if !args.ack && !messages.is_empty() && !service.capabilities().durable_leases {
        eprintln!(
            "warning: {} keeps no lease past the connection (durable_leases: no): the lease of \
             the {} received message(s) ends when this command exits, not after {} s; they are \
             delivered again, counted as received",
            service.provider(),
            messages.len(),
            args.visibility_timeout_secs
        );
    }
    let shown: Vec<Shown<'_>> = messages.iter().map(|m| show(m, args.ack)).collect();
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&shown)?)?;
    } else if shown.is_empty() {
        eprintln!("no messages available on {queue}");
    } else {
        let rows: Vec<Vec<String>> = shown
            .iter()
            .map(|m| {
                vec![
                    m.message_id.clone(),
                    m.correlation_id.clone().unwrap_or_else(|| "-".into()),
                    m.receive_count.to_string(),
                    m.receipt.clone(),
                    m.payload.to_string(),
                ]
            })
            .collect();
        out!(
            "{}",
            table::render(
                &[
                    "message_id",
                    "correlation_id",
                    "receives",
                    "receipt",
                    "payload"
                ],
                &rows
            )
        )?;
        if args.ack {
            outln!("acked {} messages", shown.len())?;
        }
    }
    Ok(())
}

fn show(m: &ReceivedMessage, acked: bool) -> Shown<'_> {
    Shown {
        message_id: m.metadata.message_id.to_string(),
        correlation_id: m.metadata.correlation_id.map(|c| c.to_string()),
        receive_count: m.metadata.receive_count,
        receipt: m.receipt().to_string(),
        enqueued_at: m.metadata.enqueued_at.to_rfc3339(),
        payload: String::from_utf8_lossy(&m.payload),
        acked,
    }
}
