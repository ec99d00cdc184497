//! Tests of the configuration: sources, precedence, and errors that name the key.

use super::*;

fn key_of(err: MessagingError) -> String {
    match err {
        MessagingError::Configuration { key, .. } => key,
        other => panic!("not a configuration error: {other:?}"),
    }
}

#[test]
fn defaults_are_valid_and_in_memory() {
    let c = MessagingConfig::from_toml_str("").unwrap();
    assert_eq!(c.provider, ProviderKind::InMemory);
    assert_eq!(c.queues.dead_letter_queue_suffix, "_dlq");
}

#[test]
fn full_file_parses() {
    let c = MessagingConfig::from_toml_str(
        r#"
        provider = "pgmq"
        [connection.pgmq]
        database_url = "postgres://u:secret@127.0.0.1/db"
        pool_size = 4
        [queues]
        namespaces = ["fulfillment", "inventory"]
        max_receive_count = 3
        [retry_policy]
        max_retries = 5
        [circuit_breaker]
        failure_threshold = 2
        "#,
    )
    .unwrap();
    assert_eq!(c.provider, ProviderKind::Pgmq);
    assert_eq!(c.connection.pgmq.as_ref().unwrap().pool_size, 4);
    assert_eq!(c.queues.max_receive_count, 3);
    assert_eq!(c.retry_policy.max_retries, 5);
    assert!(!format!("{c:?}").contains("secret"));
}

#[test]
fn unknown_keys_are_named() {
    let err = MessagingConfig::from_toml_str("[queues]\nmax_recieve_count = 3").unwrap_err();
    assert_eq!(key_of(err), "queues.max_recieve_count");
    let err = MessagingConfig::from_toml_str("provdier = 'pgmq'").unwrap_err();
    assert_eq!(key_of(err), "provdier");
}

#[test]
fn errors_name_the_key_but_never_echo_a_value() {
    let pw = "Zz%2Fq!9secret";
    for (toml, key) in [
        (
            format!("[connection]\npgmq = 'postgres://u:{pw}@h/db'"),
            "connection.pgmq",
        ),
        (
            format!("[connection.pgmq]\ndatabase_url = 'postgres://u:p@h/db'\npool_size = 'postgres://u:{pw}@h'"),
            "connection.pgmq.pool_size",
        ),
        (format!("provider = 'postgres://u:{pw}@h/db'"), "provider"),
        (format!("[queues]\nnamespaces = '{pw}'"), "queues.namespaces"),
        (format!("[queues]\nmax_payload_bytes = ['{pw}']"), "queues.max_payload_bytes"),
        (format!("[connection.pgmq]\ndatabase_url = \"postgres://u:{pw}@h/db"), "<root>"),
    ] {
        let err = MessagingConfig::from_toml_str(&toml).unwrap_err();
        let shown = err.to_string();
        assert!(!shown.contains("Zz%2Fq") && !shown.contains("Zz/q"), "{shown}");
        assert_eq!(key_of(err), key, "{shown}");
    }
    let err = MessagingConfig::from_toml_str("[queues]\nmax_receive_count = 'lots'").unwrap_err();
    assert!(
        err.to_string().contains("expected u32, found a string"),
        "{err}"
    );
    let err = MessagingConfig::from_toml_str("x = [1,").unwrap_err();
    assert!(
        err.to_string().contains("TOML parse error at line 1"),
        "{err}"
    );
}

#[test]
fn bad_values_are_named() {
    let err = MessagingConfig::from_toml_str("provider = 'zeromq'").unwrap_err();
    assert_eq!(key_of(err), "provider");
    let err = MessagingConfig::from_toml_str("[queues]\nmax_receive_count = 'lots'").unwrap_err();
    assert_eq!(key_of(err), "queues.max_receive_count");
    let err = MessagingConfig::from_toml_str("[queues]\nnamespaces = ['Bad NS']").unwrap_err();
    assert_eq!(key_of(err), "queues.namespaces[0]");
    let err =
        MessagingConfig::from_toml_str("[retry_policy]\nbackoff_multiplier = 0.5").unwrap_err();
    assert_eq!(key_of(err), "retry_policy.backoff_multiplier");
}

#[test]
fn missing_provider_section_is_named() {
    let err = MessagingConfig::from_toml_str("provider = 'pgmq'").unwrap_err();
    assert_eq!(key_of(err), "connection.pgmq.database_url");
    let err = MessagingConfig::from_toml_str("provider = 'pgmq'\n[connection.pgmq]\npool_size = 3")
        .unwrap_err();
    assert_eq!(key_of(err), "connection.pgmq.database_url");
}

#[test]
#[allow(clippy::result_large_err)] // figment's own test harness signature
fn environment_overrides_the_file() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "mq.toml",
            "provider = 'in_memory'\n[queues]\nmax_receive_count = 3",
        )?;
        jail.set_env("TASKER_MQ_QUEUES__MAX_RECEIVE_COUNT", "9");
        jail.set_env("TASKER_MQ_PROVIDER", "pgmq");
        jail.set_env("DATABASE_URL", "postgres://u:pw@127.0.0.1/x");
        let c = MessagingConfig::load(Some(Path::new("mq.toml"))).unwrap();
        assert_eq!(c.queues.max_receive_count, 9);
        assert_eq!(c.provider, ProviderKind::Pgmq);
        assert_eq!(
            c.connection.pgmq.unwrap().database_url.expose(),
            "postgres://u:pw@127.0.0.1/x"
        );
        Ok(())
    });
}

#[test]
fn fallback_provider_is_validated_and_named() {
    let c = MessagingConfig::from_toml_str(
        "provider = 'rabbitmq'\n[connection.rabbitmq]\nurl = 'amqp://127.0.0.1'\n\
         [connection.pgmq]\ndatabase_url = 'postgres://u:p@127.0.0.1/db'\n\
         [fallback]\nprovider = 'pgmq'",
    )
    .unwrap();
    assert_eq!(c.fallback.unwrap().provider, ProviderKind::Pgmq);
    assert!(MessagingConfig::default().fallback.is_none());

    let err = MessagingConfig::from_toml_str("[fallback]\nprovider = 'in_memory'").unwrap_err();
    assert_eq!(key_of(err), "fallback.provider");
    let err = MessagingConfig::from_toml_str("[fallback]\nprovider = 'pgmq'").unwrap_err();
    assert_eq!(key_of(err), "connection.pgmq.database_url");
    let err = MessagingConfig::from_toml_str("[fallback]\nprovidr = 'pgmq'").unwrap_err();
    assert_eq!(key_of(err), "fallback.providr");
}

#[test]
fn backpressure_and_retry_keys_have_defaults_and_are_validated() {
    let c = MessagingConfig::from_toml_str("").unwrap();
    assert!(c.retry_policy.jitter && c.retry_policy.retry_sends);
    assert_eq!(c.backpressure.min_dwell_ms, 5_000);
    let c = MessagingConfig::from_toml_str("[retry_policy]\njitter = false").unwrap();
    assert!(!c.retry_policy.jitter);
    let err = MessagingConfig::from_toml_str("[backpressure]\nelevated_exit = 0.7").unwrap_err();
    assert_eq!(key_of(err), "backpressure.elevated_exit");
    let err = MessagingConfig::from_toml_str("[backpressure]\ncritical_enter = 0.6").unwrap_err();
    assert_eq!(key_of(err), "backpressure.critical_exit");
}

#[test]
fn the_example_file_parses_to_the_defaults() {
    let text = include_str!("../../../../config/tasker-mq.example.toml");
    let c = MessagingConfig::from_toml_str(text).unwrap();
    let d = MessagingConfig::default();
    assert_eq!(c.provider, d.provider);
    assert_eq!(c.retry_policy, d.retry_policy);
    assert_eq!(c.circuit_breaker, d.circuit_breaker);
    assert_eq!(c.resource_validation, d.resource_validation);
    assert_eq!(c.backpressure, d.backpressure);
    assert_eq!(c.fallback, d.fallback);
    assert_eq!(c.queues.max_receive_count, d.queues.max_receive_count);
    assert_eq!(c.queues.max_payload_bytes, d.queues.max_payload_bytes);
}

#[test]
fn missing_file_is_an_error() {
    let err = MessagingConfig::load(Some(Path::new("/nonexistent/mq.toml"))).unwrap_err();
    assert_eq!(key_of(err), "--config");
}
