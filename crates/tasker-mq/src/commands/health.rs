//! `tasker-mq health`: health and the provider's capabilities.

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tasker_messaging::MessagingHealth;

use crate::provider::GlobalOpts;
use crate::table;

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Print health and capabilities as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(global: &GlobalOpts, args: HealthArgs) -> anyhow::Result<()> {
    let (_, service) = global.connect().await?;
    let health = service
        .health_check()
        .await
        .with_context(|| format!("checking the health of {}", service.provider()))?;
    let caps = service.capabilities();
    if args.json {
        let out = json!({
            "provider": service.provider(),
            "health": health,
            "capabilities": caps,
        });
        outln!("{}", serde_json::to_string_pretty(&out)?)?;
    } else {
        let state = match &health {
            MessagingHealth::Healthy {
                queue_depth,
                in_flight,
            } => format!("healthy (queue depth {queue_depth}, in flight {in_flight})"),
            MessagingHealth::Degraded { reason } => format!("degraded: {reason}"),
            MessagingHealth::Unhealthy { error } => format!("unhealthy: {error}"),
        };
        outln!("provider: {}", service.provider())?;
        outln!("health:   {state}\n")?;
        let mut rows: Vec<Vec<String>> = caps
            .flags()
            .into_iter()
            .map(|(c, on)| vec![c.to_string(), if on { "yes" } else { "no" }.into()])
            .collect();
        rows.push(vec![
            "native_dead_letter".into(),
            yes_no(caps.native_dead_letter),
        ]);
        rows.push(vec![
            "max_payload_bytes".into(),
            caps.max_payload_bytes.to_string(),
        ]);
        rows.push(vec![
            "max_batch_size".into(),
            caps.max_batch_size.to_string(),
        ]);
        rows.push(vec![
            "timer_resolution".into(),
            format!("{:?}", caps.timer_resolution),
        ]);
        out!("{}", table::render(&["capability", "supported"], &rows))?;
        if !caps.durable_leases {
            outln!(
                "\nnote: durable_leases no: a lease ends when the connection that took it closes \
                 (the backend hands the message back, counted), not at its visibility timeout"
            )?;
        }
    }
    // Degraded still serves; only an unhealthy provider fails the command (for scripts).
    if let MessagingHealth::Unhealthy { error } = &health {
        anyhow::bail!("{} is unhealthy: {error}", service.provider());
    }
    Ok(())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}
