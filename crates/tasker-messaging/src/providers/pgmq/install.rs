//! Finding pgmq in a database, installing its SQL when asked, preparing our schema, and
//! reading the server's connection limits.

use std::str::FromStr;

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use super::sql::{SCHEMA_SQL, SCHEMA_VERSION};
use super::{map_sqlx, PgmqMessageService, PgmqSettings};
use crate::error::{MessagingError, Result};
use crate::resources::SystemResourceLimits;
use crate::secret::{scrub, SecretUrl};

/// What a database has of pgmq.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PgmqInstallation {
    /// `CREATE EXTENSION pgmq` was run: never install the SQL over it.
    Extension { version: String },
    /// pgmq's SQL API (schema `pgmq`) is there without the extension.
    Sql { version: Option<String> },
    /// Neither.
    Missing,
}

impl PgmqInstallation {
    pub fn is_present(&self) -> bool {
        !matches!(self, PgmqInstallation::Missing)
    }
}

/// What [`PgmqMessageService::install_sql`](super::PgmqMessageService::install_sql) did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum InstallOutcome {
    /// The embedded SQL was installed.
    Installed { version: Option<String> },
    /// pgmq was there already (extension or SQL); nothing was changed.
    AlreadyPresent { installation: PgmqInstallation },
}

/// Key of the session advisory lock that serializes installation and schema setup between
/// processes (an arbitrary constant: "tasker_m" in ASCII).
const SETUP_LOCK: i64 = 0x7461_736b_6572_5f6d;

pub(super) async fn detect(
    conn: &mut PgConnection,
) -> std::result::Result<PgmqInstallation, sqlx::Error> {
    let extension: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'pgmq'")
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(version) = extension {
        return Ok(PgmqInstallation::Extension { version });
    }
    let has_sql: bool = sqlx::query_scalar(
        "SELECT to_regclass('pgmq.meta') IS NOT NULL
            AND to_regprocedure('pgmq.create(text)') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !has_sql {
        return Ok(PgmqInstallation::Missing);
    }
    // The SQL installer records what it applied; older installs have no such table.
    let has_migrations: bool =
        sqlx::query_scalar("SELECT to_regclass('pgmq.__pgmq_migrations') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await?;
    let version: Option<String> = if has_migrations {
        sqlx::query_scalar(
            "SELECT version FROM pgmq.__pgmq_migrations ORDER BY run_at DESC LIMIT 1",
        )
        .fetch_optional(&mut *conn)
        .await?
    } else {
        None
    };
    Ok(PgmqInstallation::Sql { version })
}

/// Whether the installed pgmq has the columns our statements use: `headers` (pgmq >= 1.5;
/// dead-letter records and other clients' headers) and `last_read_at` (pgmq >= 1.10).
async fn has_required_columns(conn: &mut PgConnection) -> std::result::Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) = 2 FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid
         WHERE t.oid = to_regtype('pgmq.message_record')
           AND a.attname IN ('headers', 'last_read_at') AND NOT a.attisdropped",
    )
    .fetch_one(conn)
    .await
}

/// Installs pgmq's embedded SQL (offline) unless pgmq is already there. Serialized between
/// processes by an advisory lock held on `conn`.
pub(super) async fn install_locked(
    conn: &mut PgConnection,
    options: &PgConnectOptions,
) -> std::result::Result<InstallOutcome, InstallError> {
    let installation = detect(conn).await?;
    if installation.is_present() {
        return Ok(InstallOutcome::AlreadyPresent { installation });
    }
    // The installer takes a pool; a separate one-connection pool, since `conn` holds the lock.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    let result = pgmq::install::install_sql_from_embedded(&pool).await;
    pool.close().await;
    result.map_err(|e| InstallError::Pgmq(e.to_string()))?;
    match detect(conn).await? {
        PgmqInstallation::Sql { version } => Ok(InstallOutcome::Installed { version }),
        other => Err(InstallError::Pgmq(format!(
            "installer finished but pgmq is not found ({other:?})"
        ))),
    }
}

pub(super) enum InstallError {
    Sql(sqlx::Error),
    Pgmq(String),
}

impl From<sqlx::Error> for InstallError {
    fn from(e: sqlx::Error) -> Self {
        InstallError::Sql(e)
    }
}

/// Everything `initialize` needs from the database before the pool is used: limits checked,
/// pgmq found (or installed when configured), our schema in place. One connection, one lock.
pub(super) async fn prepare(
    settings: &PgmqSettings,
    options: &PgConnectOptions,
    required: u32,
) -> Result<()> {
    let url = &settings.database_url;
    let mut conn = PgConnection::connect_with(options)
        .await
        .map_err(|e| map_sqlx(e, "connect", None, None, url))?;

    let limits = read_limits(&mut conn)
        .await
        .map_err(|e| map_sqlx(e, "read limits", None, None, url))?;
    limits.validate(
        &crate::resources::ResourceRequirements {
            db_connections: required,
            memory_mb: 0,
        },
        &settings.resource_validation,
    )?;

    let result = setup(&mut conn, settings, options).await;
    let _ = conn.close().await;
    result
}

async fn setup(
    conn: &mut PgConnection,
    settings: &PgmqSettings,
    options: &PgConnectOptions,
) -> Result<()> {
    let url = &settings.database_url;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(SETUP_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, "lock", None, None, url))?;
    let result = setup_locked(conn, settings, options).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SETUP_LOCK)
        .execute(&mut *conn)
        .await;
    result
}

async fn setup_locked(
    conn: &mut PgConnection,
    settings: &PgmqSettings,
    options: &PgConnectOptions,
) -> Result<()> {
    let url = &settings.database_url;
    let installation = detect(conn)
        .await
        .map_err(|e| map_sqlx(e, "detect pgmq", None, None, url))?;
    if !installation.is_present() {
        if !settings.install_sql {
            return Err(MessagingError::config(
                "connection.pgmq.install_sql",
                "the database has neither the pgmq extension nor pgmq's SQL; run \
                 `CREATE EXTENSION pgmq`, `tasker-mq pgmq install`, or set install_sql = true",
            ));
        }
        install_locked(conn, options)
            .await
            .map_err(|e| install_error(e, url))?;
        tracing::info!("installed pgmq's SQL API");
    }
    let encoding: String = sqlx::query_scalar("SELECT current_setting('server_encoding')")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, "detect encoding", None, None, url))?;
    if !encoding.eq_ignore_ascii_case("UTF8") {
        // Payload bytes round-trip through jsonb text: only UTF-8 keeps every character.
        return Err(MessagingError::config(
            "connection.pgmq.database_url",
            format!("the database encoding is {encoding}; pgmq queues need a UTF8 database"),
        ));
    }
    if !has_required_columns(conn)
        .await
        .map_err(|e| map_sqlx(e, "detect pgmq", None, None, url))?
    {
        return Err(MessagingError::config(
            "connection.pgmq.database_url",
            "the installed pgmq lacks message headers or last_read_at (pgmq >= 1.10 is required)",
        ));
    }
    // Two queries: a relation named in SQL must exist when the statement is parsed.
    let has_table: bool =
        sqlx::query_scalar("SELECT to_regclass('tasker_messaging.schema_version') IS NOT NULL")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| map_sqlx(e, "schema", None, None, url))?;
    let version: Option<i32> = if has_table {
        sqlx::query_scalar("SELECT max(version) FROM tasker_messaging.schema_version")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| map_sqlx(e, "schema", None, None, url))?
    } else {
        None
    };
    if version != Some(SCHEMA_VERSION) {
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| map_sqlx(e, "schema", None, None, url))?;
        // Several statements: the simple query protocol (a &str executes as such).
        sqlx::Executor::execute(&mut *tx, SCHEMA_SQL)
            .await
            .map_err(|e| map_sqlx(e, "schema", None, None, url))?;
        sqlx::query("DELETE FROM tasker_messaging.schema_version")
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, "schema", None, None, url))?;
        sqlx::query("INSERT INTO tasker_messaging.schema_version (version) VALUES ($1)")
            .bind(SCHEMA_VERSION)
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, "schema", None, None, url))?;
        tx.commit()
            .await
            .map_err(|e| map_sqlx(e, "schema", None, None, url))?;
    }
    Ok(())
}

pub(super) fn install_error(e: InstallError, url: &crate::secret::SecretUrl) -> MessagingError {
    match e {
        InstallError::Sql(e) => map_sqlx(e, "install pgmq", None, None, url),
        InstallError::Pgmq(message) => MessagingError::Provider {
            provider: crate::service::ProviderKind::Pgmq,
            operation: "install pgmq",
            message: crate::secret::scrub(&message, url),
            retryable: false,
        },
    }
}

/// Installs pgmq's SQL under the setup lock; for the CLI (`tasker-mq pgmq install`).
pub(super) async fn install_with_lock(
    options: &PgConnectOptions,
    url: &crate::secret::SecretUrl,
) -> Result<InstallOutcome> {
    let mut conn = PgConnection::connect_with(options)
        .await
        .map_err(|e| map_sqlx(e, "connect", None, None, url))?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(SETUP_LOCK)
        .execute(&mut conn)
        .await
        .map_err(|e| map_sqlx(e, "lock", None, None, url))?;
    let result = install_locked(&mut conn, options)
        .await
        .map_err(|e| install_error(e, url));
    let _ = conn.close().await;
    result
}

/// The server's `max_connections` and the connections it keeps back from ordinary clients
/// (`superuser_reserved_connections`, plus `reserved_connections` on PostgreSQL 16+).
pub(super) async fn read_limits(
    conn: &mut PgConnection,
) -> std::result::Result<SystemResourceLimits, sqlx::Error> {
    let (max, superuser_reserved, reserved): (i32, i32, i32) = sqlx::query_as(
        "SELECT current_setting('max_connections')::int,
                current_setting('superuser_reserved_connections')::int,
                coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)",
    )
    .fetch_one(conn)
    .await?;
    Ok(SystemResourceLimits {
        database_max_connections: Some(max.max(0) as u32),
        database_reserved_connections: (superuser_reserved.max(0) + reserved.max(0)) as u32,
        available_memory_mb: None,
    })
}

/// The connect options of `url`; a URL PostgreSQL cannot parse is a configuration error
/// (scrubbed of its password).
fn connect_options(url: &SecretUrl) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url.expose()).map_err(|e| {
        MessagingError::config("connection.pgmq.database_url", scrub(&e.to_string(), url))
    })
}

/// Runs `query` on one short-lived connection to `url`, closing it afterwards.
async fn on_one_connection<T>(
    url: &SecretUrl,
    what: &'static str,
    query: impl for<'c> FnOnce(
        &'c mut sqlx::PgConnection,
    )
        -> futures::future::BoxFuture<'c, std::result::Result<T, sqlx::Error>>,
) -> Result<T> {
    let mut conn = sqlx::PgConnection::connect_with(&connect_options(url)?)
        .await
        .map_err(|e| map_sqlx(e, "connect", None, None, url))?;
    let result = query(&mut conn)
        .await
        .map_err(|e| map_sqlx(e, what, None, None, url));
    let _ = conn.close().await;
    result
}

impl PgmqMessageService {
    /// What the database at `url` has of pgmq.
    pub async fn detect_installation(url: &SecretUrl) -> Result<PgmqInstallation> {
        on_one_connection(url, "detect pgmq", |conn| Box::pin(detect(conn))).await
    }

    /// Installs pgmq's embedded SQL into the database at `url` unless the extension or the SQL
    /// is already there (`tasker-mq pgmq install`). Offline; safe to run concurrently.
    pub async fn install_sql(url: &SecretUrl) -> Result<InstallOutcome> {
        install_with_lock(&connect_options(url)?, url).await
    }

    /// The server's connection limits (`max_connections`, reserved connections), for
    /// [`crate::build_service_with_limits`].
    pub async fn system_limits(url: &SecretUrl) -> Result<SystemResourceLimits> {
        on_one_connection(url, "read limits", |conn| Box::pin(read_limits(conn))).await
    }
}
