//! Finding pgmq, installing its SQL offline when asked, and never installing twice. Each test
//! makes a database of its own and drops it.

mod support;

use tasker_messaging::{
    InstallOutcome, MessagingError, MessagingService, PgmqInstallation, PgmqMessageService,
    PgmqSettings, SecretUrl,
};

struct ScratchDb {
    name: String,
    url: SecretUrl,
}

impl ScratchDb {
    async fn create(admin: &sqlx::PgPool) -> ScratchDb {
        let name = format!("tasker_pgmq_install_{:08x}", rand::random::<u32>());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin)
            .await
            .unwrap();
        let base = support::database_url().expose().to_owned();
        let (prefix, _) = base.rsplit_once('/').unwrap();
        ScratchDb {
            url: SecretUrl::new(format!("{prefix}/{name}")),
            name,
        }
    }

    async fn drop(self, admin: &sqlx::PgPool) {
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(admin)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn installs_into_an_empty_database_only_when_asked_and_only_once() {
    // Skips (outside CI) or fails (in CI) when PostgreSQL is unreachable.
    let Some(_svc) = support::service().await else {
        return;
    };
    let admin = support::raw_pool().await;
    let db = ScratchDb::create(&admin).await;

    assert_eq!(
        PgmqMessageService::detect_installation(&db.url)
            .await
            .unwrap(),
        PgmqInstallation::Missing
    );
    // Not asked to install: a configuration error naming the key, and nothing installed.
    let svc = PgmqMessageService::new(PgmqSettings::new(db.url.clone()).with_pool_size(2)).unwrap();
    match svc.initialize().await {
        Err(MessagingError::Configuration { key, .. }) => {
            assert_eq!(key, "connection.pgmq.install_sql")
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    assert_eq!(
        PgmqMessageService::detect_installation(&db.url)
            .await
            .unwrap(),
        PgmqInstallation::Missing
    );

    // Two installers at once: one installs, the other finds it there.
    let (a, b) = tokio::join!(
        PgmqMessageService::install_sql(&db.url),
        PgmqMessageService::install_sql(&db.url)
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let installed = outcomes
        .iter()
        .filter(|o| matches!(o, InstallOutcome::Installed { .. }))
        .count();
    assert_eq!(installed, 1, "{outcomes:?}");
    match PgmqMessageService::detect_installation(&db.url)
        .await
        .unwrap()
    {
        PgmqInstallation::Sql { version } => {
            assert!(
                version.is_some_and(|v| v.starts_with('1')),
                "pgmq 1.x expected"
            )
        }
        other => panic!("expected the SQL install, got {other:?}"),
    }
    assert!(matches!(
        PgmqMessageService::install_sql(&db.url).await.unwrap(),
        InstallOutcome::AlreadyPresent { .. }
    ));

    // Now a service without install_sql works there.
    let svc = PgmqMessageService::new(PgmqSettings::new(db.url.clone()).with_pool_size(2)).unwrap();
    svc.initialize().await.unwrap();
    let queue = support::queue("installed");
    svc.create_queue(&queue).await.unwrap();
    svc.send(&queue, tasker_messaging::OutgoingMessage::new("{}"))
        .await
        .unwrap();
    assert_eq!(svc.get_queue_stats(&queue).await.unwrap().message_count, 1);
    svc.shutdown().await.unwrap();
    db.drop(&admin).await;
}

#[tokio::test]
async fn the_test_database_is_detected_as_installed() {
    let Some(svc) = support::service().await else {
        return;
    };
    let found = PgmqMessageService::detect_installation(&support::database_url())
        .await
        .unwrap();
    assert!(found.is_present(), "{found:?}");
    // Running the installer where pgmq is present changes nothing.
    assert!(matches!(
        PgmqMessageService::install_sql(&support::database_url())
            .await
            .unwrap(),
        InstallOutcome::AlreadyPresent { .. }
    ));
    assert!(svc.health_check().await.unwrap().is_healthy());
}

#[tokio::test]
async fn an_extension_is_never_installed_over() {
    // No pgmq extension package exists on these machines, so a database with a real
    // `CREATE EXTENSION pgmq` cannot be made here; what can be checked is that detection reads
    // pg_extension first and that the installer refuses whenever detection finds anything.
    let Some(_svc) = support::service().await else {
        return;
    };
    let admin = support::raw_pool().await;
    let available: Option<String> = sqlx::query_scalar(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'pgmq'",
    )
    .fetch_optional(&admin)
    .await
    .unwrap();
    let Some(_) = available else {
        eprintln!("pgmq extension not available on this server: extension path not exercised");
        return;
    };
    let db = ScratchDb::create(&admin).await;
    let pool = sqlx::PgPool::connect(db.url.expose()).await.unwrap();
    sqlx::query("CREATE EXTENSION pgmq")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    assert!(matches!(
        PgmqMessageService::detect_installation(&db.url)
            .await
            .unwrap(),
        PgmqInstallation::Extension { .. }
    ));
    assert!(matches!(
        PgmqMessageService::install_sql(&db.url).await.unwrap(),
        InstallOutcome::AlreadyPresent {
            installation: PgmqInstallation::Extension { .. }
        }
    ));
    db.drop(&admin).await;
}
