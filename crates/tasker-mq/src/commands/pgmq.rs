//! `tasker-mq pgmq install|status`: pgmq's SQL API on the configured database.
//!
//! `install` installs the SQL embedded in the `pgmq` crate (offline) when the database has
//! neither the pgmq extension nor its SQL; it never installs over the extension.

use clap::Subcommand;
use tasker_messaging::{InstallOutcome, PgmqInstallation};
use tasker_messaging::{MessagingError, PgmqMessageService, SecretUrl};

use crate::provider::GlobalOpts;

#[derive(Debug, Subcommand)]
pub enum PgmqCommand {
    /// Install pgmq's SQL API when the database has neither the extension nor the SQL.
    Install,
    /// Show whether pgmq is installed, as the extension or as SQL.
    Status,
}

fn database_url(global: &GlobalOpts) -> anyhow::Result<SecretUrl> {
    let config = global.load_config_for_provider("pgmq")?;
    let pgmq = config
        .connection
        .pgmq
        .ok_or_else(|| MessagingError::Configuration {
            key: "connection.pgmq.database_url".into(),
            message: "required (or set DATABASE_URL)".into(),
        })?;
    Ok(pgmq.database_url)
}

fn describe(installation: &PgmqInstallation) -> String {
    match installation {
        PgmqInstallation::Extension { version } => format!("the pgmq extension {version}"),
        PgmqInstallation::Sql { version: Some(v) } => format!("pgmq's SQL API {v}"),
        PgmqInstallation::Sql { version: None } => "pgmq's SQL API".into(),
        PgmqInstallation::Missing => "no pgmq".into(),
    }
}

pub async fn run(global: &GlobalOpts, command: PgmqCommand) -> anyhow::Result<()> {
    let url = database_url(global)?;
    match command {
        PgmqCommand::Status => {
            let installation = PgmqMessageService::detect_installation(&url).await?;
            outln!("{url}: {}", describe(&installation))?;
        }
        PgmqCommand::Install => match PgmqMessageService::install_sql(&url).await? {
            InstallOutcome::Installed { version } => outln!(
                "{url}: installed pgmq's SQL API{}",
                version.map(|v| format!(" {v}")).unwrap_or_default()
            )?,
            InstallOutcome::AlreadyPresent { installation } => outln!(
                "{url}: {} already present; nothing changed",
                describe(&installation)
            )?,
        },
    }
    Ok(())
}
