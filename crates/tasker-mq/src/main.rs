//! `tasker-mq`: queues, messages, health and benchmarks for any tasker-messaging provider.
//!
//! Global options pick the provider (`--config`, `--provider`, the `TASKER_MQ_*` environment);
//! each subcommand lives in its own module under `commands/`.

/// `println!` that returns the write error (stdout closed by `| head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` that returns the write error instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod commands;
mod progress;
mod provider;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::provider::GlobalOpts;

/// Command-line tool for tasker-messaging: manage queues, send and receive messages, check
/// health and benchmark a provider.
///
/// The provider comes from `--provider`, else the configuration (`--config` file, then the
/// environment: `TASKER_MQ_PROVIDER`, `TASKER_MQ_<SECTION>__<KEY>`, `DATABASE_URL`, `AMQP_URL`, ...),
/// else the embedded in-memory provider. The in-memory provider lives inside this process:
/// its queues disappear when the command exits.
#[derive(Debug, Parser)]
#[command(name = "tasker-mq", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sample workflow (order fulfilment) for N tasks and print a summary.
    Demo(commands::demo::DemoArgs),
    /// Create, inspect, purge or delete a queue.
    #[command(subcommand)]
    Queue(commands::queue::QueueCommand),
    /// Send a message (or N copies) to a queue.
    Send(commands::send::SendArgs),
    /// Receive (lease) messages from a queue, optionally acknowledging them.
    Receive(commands::receive::ReceiveArgs),
    /// Check the provider's health and show its capabilities.
    Health(commands::health::HealthArgs),
    /// Measure throughput and send-to-receive latency of the provider.
    Bench(commands::bench::BenchArgs),
    /// Run the sample workflow's executor pools as a long-lived process with HTTP /health and
    /// /metrics (Prometheus).
    Worker(commands::worker::WorkerArgs),
    /// Install or inspect pgmq's SQL API on the configured PostgreSQL.
    #[cfg(feature = "pgmq")]
    #[command(subcommand)]
    Pgmq(commands::pgmq::PgmqCommand),
    /// Move a queue's messages between two providers, ids preserved.
    ///
    /// Reads the configuration files given with --from and --to as written: --config,
    /// --provider and the environment do not apply to this command.
    Migrate(commands::migrate::MigrateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`tasker-mq ... | head`): not a failure of ours.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the context chain on one line: "doing X: because Y".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo(args) => commands::demo::run(&cli.global, args).await,
        Command::Queue(cmd) => commands::queue::run(&cli.global, cmd).await,
        Command::Send(args) => commands::send::run(&cli.global, args).await,
        Command::Receive(args) => commands::receive::run(&cli.global, args).await,
        Command::Health(args) => commands::health::run(&cli.global, args).await,
        Command::Bench(args) => commands::bench::run(&cli.global, args).await,
        Command::Worker(args) => commands::worker::run(&cli.global, args).await,
        #[cfg(feature = "pgmq")]
        Command::Pgmq(cmd) => commands::pgmq::run(&cli.global, cmd).await,
        Command::Migrate(args) => commands::migrate::run(args).await,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Logs go to stderr, quiet unless RUST_LOG asks, so stdout stays clean for `--json`.
fn init_tracing() {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // sqlx logs the value of every connect parameter it does not know, at warn, decoded: a
    // `?sslpassword=...` (libpq's, not sqlx's) would print the password.
    if let Ok(quiet) = "sqlx_postgres::options::parse=error".parse() {
        filter = filter.add_directive(quiet);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
