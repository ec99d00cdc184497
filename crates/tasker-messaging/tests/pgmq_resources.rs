//! The pool size is checked against the server's max_connections before connecting for real.

mod support;

use tasker_messaging::{
    build_service_with_limits, MessagingConfig, MessagingError, MessagingService,
    PgmqMessageService,
};

#[tokio::test]
async fn the_servers_limits_are_read() {
    let Some(_svc) = support::service().await else {
        return;
    };
    let pool = support::raw_pool().await;
    let max: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&pool)
        .await
        .unwrap();
    let reserved: String = sqlx::query_scalar("SHOW superuser_reserved_connections")
        .fetch_one(&pool)
        .await
        .unwrap();
    let limits = PgmqMessageService::system_limits(&support::database_url())
        .await
        .unwrap();
    assert_eq!(limits.database_max_connections, Some(max.parse().unwrap()));
    assert!(limits.database_reserved_connections >= reserved.parse::<u32>().unwrap());
}

#[tokio::test]
async fn a_pool_larger_than_the_server_allows_is_refused_naming_both_numbers() {
    let Some(_svc) = support::service().await else {
        return;
    };
    let limits = PgmqMessageService::system_limits(&support::database_url())
        .await
        .unwrap();
    let max = limits.database_max_connections.unwrap();
    let svc = PgmqMessageService::new(support::settings().with_pool_size(max)).unwrap();
    assert_eq!(svc.resource_requirements().db_connections, max + 1);
    let err = svc.initialize().await.unwrap_err();
    match &err {
        MessagingError::ResourcesExceeded {
            required,
            available,
            ..
        } => {
            assert_eq!(*required, u64::from(max) + 1);
            assert!(*available < u64::from(max));
        }
        other => panic!("expected ResourcesExceeded, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&(max + 1).to_string()), "{text}");
    assert!(text.contains(&format!("max_connections {max}")), "{text}");
    // Nothing was left running: the service is usable by nobody and holds no pool.
    assert!(svc.pool().is_err());
}

#[tokio::test]
async fn the_factory_validates_with_the_servers_limits_and_can_be_told_not_to() {
    let Some(_svc) = support::service().await else {
        return;
    };
    let url = support::database_url();
    let limits = PgmqMessageService::system_limits(&url).await.unwrap();
    let max = limits.database_max_connections.unwrap();
    let toml = format!(
        "provider = 'pgmq'\n[connection.pgmq]\ndatabase_url = '{}'\npool_size = {max}\ninstall_sql = true\n",
        url.expose()
    );
    let config = MessagingConfig::from_toml_str(&toml).unwrap();
    let err = build_service_with_limits(&config, &limits)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, MessagingError::ResourcesExceeded { .. }),
        "{err:?}"
    );

    // A reasonable pool passes and works.
    let ok = MessagingConfig::from_toml_str(
        &toml.replace(&format!("pool_size = {max}"), "pool_size = 2"),
    )
    .unwrap();
    let svc = build_service_with_limits(&ok, &limits).await.unwrap();
    assert!(svc.health_check().await.unwrap().is_healthy());
    assert!(svc.pgmq().is_some());
    svc.shutdown().await.unwrap();
}
