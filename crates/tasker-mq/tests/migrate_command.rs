//! The `migrate` command, compiled here on its own until the CLI wires it in
//! (`tasker-mq migrate --from <config> --to <config> --queue <q>`).

#[path = "../src/commands/migrate.rs"]
#[allow(dead_code)]
mod migrate;

use std::sync::Arc;

use clap::Parser;
use tasker_messaging::resilience::MigrationOptions;
use tasker_messaging::{InMemoryMessageService, MessagingService, OutgoingMessage, QueueName};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: migrate::MigrateArgs,
}

#[test]
fn arguments_parse_with_defaults() {
    let cli = Cli::try_parse_from([
        "migrate",
        "--from",
        "a.toml",
        "--to",
        "b.toml",
        "--queue",
        "orders_queue",
    ])
    .unwrap();
    assert_eq!(cli.args.queue, "orders_queue");
    assert_eq!(cli.args.batch_size, 100);
    assert_eq!(cli.args.visibility_timeout_secs, 60);
    assert!(
        Cli::try_parse_from(["migrate", "--from", "a.toml", "--queue", "q"]).is_err(),
        "--to is required"
    );
}

#[tokio::test]
async fn moves_every_message_and_reports_the_count() {
    let from: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
    let to: Arc<dyn MessagingService> = Arc::new(InMemoryMessageService::default());
    let queue = QueueName::new("cli_migrate_queue").unwrap();
    from.create_queue(&queue).await.unwrap();
    let batch: Vec<_> = (0..1_234)
        .map(|i: u32| OutgoingMessage::new(i.to_be_bytes().to_vec()))
        .collect();
    let ids: std::collections::HashSet<_> = batch.iter().map(|m| m.message_id).collect();
    from.send_batch(&queue, batch).await.unwrap();

    let report = migrate::run_with_services(
        from.clone(),
        to.clone(),
        &queue,
        &MigrationOptions::default(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(report.moved, 1_234);
    let line = migrate::summary(&report, "in_memory", "in_memory");
    assert!(
        line.starts_with("migrated 1234 messages from in_memory:cli_migrate_queue"),
        "{line}"
    );
    let got = to
        .receive(&queue, 10_000, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let got: std::collections::HashSet<_> = got.iter().map(|m| m.metadata.message_id).collect();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn run_reports_bad_input_naming_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("tasker-mq-migrate-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mem = dir.join("mem.toml");
    std::fs::write(&mem, "provider = 'in_memory'\n").unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "provider = 'in_memory'\n[queues]\nmax_recieve_count = 3\n",
    )
    .unwrap();
    let args = |from: &std::path::Path, queue: &str| migrate::MigrateArgs {
        from: from.to_owned(),
        to: mem.clone(),
        queue: queue.into(),
        target_queue: None,
        batch_size: 10,
        visibility_timeout_secs: 5,
        max_messages: None,
        json: false,
    };
    let err = format!("{:#}", migrate::run(args(&bad, "q1")).await.unwrap_err());
    assert!(err.contains("max_recieve_count"), "{err}");
    let err = format!(
        "{:#}",
        migrate::run(args(&mem, "Bad Name")).await.unwrap_err()
    );
    assert!(err.contains("--queue"), "{err}");
    // An in-memory target would drop the moved messages when the process exits: refused.
    let err = format!("{:#}", migrate::run(args(&mem, "q1")).await.unwrap_err());
    assert!(err.contains("--to names the in_memory provider"), "{err}");
    let err = format!(
        "{:#}",
        migrate::run(args(&dir.join("none.toml"), "q1"))
            .await
            .unwrap_err()
    );
    assert!(err.contains("none.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
