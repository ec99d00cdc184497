//! Runs the built `tasker-mq` binary as a user would.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// The binary with provider-selecting environment removed, so the ambient shell cannot change
/// what a test exercises.
fn tasker_mq() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tasker-mq"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TASKER_MQ_") {
            cmd.env_remove(key);
        }
    }
    for key in [
        "DATABASE_URL",
        "AMQP_URL",
        "REDIS_URL",
        "NATS_URL",
        "SQS_ENDPOINT_URL",
        "KAFKA_BROKERS",
    ] {
        cmd.env_remove(key);
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the tasker-mq binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, contents).expect("write temp config");
    path
}

#[test]
fn health_reports_in_memory_and_its_capabilities() {
    let out = run(tasker_mq().arg("health"));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("provider: in_memory"), "{text}");
    assert!(text.contains("healthy"), "{text}");
    assert!(text.contains("delayed_send"), "{text}");

    let out = run(tasker_mq().args(["health", "--json"]));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("health --json is JSON");
    assert_eq!(json["provider"], "in_memory");
    assert_eq!(json["health"]["state"], "healthy");
    assert_eq!(json["capabilities"]["dead_letter_queues"], true);
    assert_eq!(json["capabilities"]["exchange_routing"], false);
}

#[test]
fn bench_json_reports_every_step() {
    let out = run(tasker_mq().args(["bench", "--messages", "2000", "--json"]));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("bench --json is JSON");
    assert_eq!(report["provider"], "in_memory");
    assert_eq!(report["messages"], 2000);
    assert!(report["payload_bytes"].as_u64().unwrap() > 100);
    let steps = report["steps"].as_array().expect("steps array");
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "send",
            "send_batch",
            "receive_ack",
            "consume_ack",
            "send_receive_ack",
            "latency"
        ]
    );
    for step in steps {
        let name = &step["step"];
        for field in ["msg_per_sec", "seconds", "p50_ms", "p99_ms", "max_ms"] {
            let v = step[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}.{field} missing"));
            assert!(v > 0.0, "{name}.{field} = {v}");
        }
        assert!(step["p99_ms"].as_f64() >= step["p50_ms"].as_f64(), "{name}");
        let expected = if name == "latency" { 1000 } else { 2000 };
        assert_eq!(step["messages"], expected, "{name}");
        assert!(step["raw"].is_null(), "in-memory has no raw baseline");
    }
    // --json keeps stdout machine-readable: no progress bar or table mixed in.
    assert!(!stdout(&out).contains("msg/s"));
}

#[test]
fn bench_runs_selected_steps_with_several_tasks() {
    let out = run(tasker_mq().args([
        "--provider",
        "memory",
        "bench",
        "--messages",
        "999",
        "--tasks",
        "3",
        "--batch-size",
        "10",
        "--steps",
        "receive_ack,send_receive_ack",
        "--json",
    ]));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for step in steps {
        // Every message sent was received and acked exactly once across the tasks.
        assert_eq!(step["messages"], 999, "{}", step["step"]);
    }
}

#[test]
fn hostile_queue_names_fail_naming_the_rule() {
    for (name, rule) in [
        ("orders;drop table", "only a-z, 0-9 and _ are allowed"),
        ("Orders", "must start with a lower-case letter"),
        (&"q".repeat(48) as &str, "longer than 47 characters"),
        ("", "must not be empty"),
    ] {
        let out = run(tasker_mq().args(["queue", "create", name]));
        assert!(!out.status.success(), "{name:?} was accepted");
        let err = stderr(&out);
        assert!(err.contains("invalid queue name"), "{name:?}: {err}");
        assert!(err.contains(rule), "{name:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn queue_create_and_send_succeed_on_a_valid_name() {
    let out = run(tasker_mq().args(["queue", "create", "orders_queue"]));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "created orders_queue");

    let out = run(tasker_mq().args(["send", "orders_queue", "{}", "--create", "--count", "3"]));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let ids: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        uuid::Uuid::parse_str(id).expect("send prints message ids");
    }
}

#[test]
fn a_missing_queue_is_a_clear_error() {
    let out = run(tasker_mq().args(["queue", "stats", "nowhere"]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("queue \"nowhere\" not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_provider_fails_naming_the_value() {
    let out = run(tasker_mq().args(["--provider", "zeromq", "health"]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("\"zeromq\""), "{err}");
    assert!(err.contains("in_memory"), "lists the valid values: {err}");
}

#[test]
fn a_missing_config_file_fails_naming_the_file() {
    let out = run(tasker_mq().args(["--config", "/nonexistent/tasker-mq.toml", "health"]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/nonexistent/tasker-mq.toml"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn a_config_file_with_a_bad_key_fails_naming_the_key() {
    let path = temp_file("bad-key.toml", "[queues]\nmax_recieve_count = 3\n");
    let out = run(tasker_mq().arg("--config").arg(&path).arg("health"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("queues.max_recieve_count"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_provider_flag_overrides_file_and_environment() {
    // The file and the environment both ask for pgmq without a database URL, which alone
    // fails; --provider in_memory replaces the choice before validation.
    let path = temp_file("pgmq.toml", "provider = \"pgmq\"\n");
    let out = run(tasker_mq().arg("--config").arg(&path).arg("health"));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("connection.pgmq.database_url"),
        "{}",
        stderr(&out)
    );

    let out = run(tasker_mq()
        .env("TASKER_MQ_PROVIDER", "pgmq")
        .arg("--config")
        .arg(&path)
        .args(["--provider", "in_memory", "health", "--json"]));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["provider"], "in_memory");
}

#[test]
fn secrets_in_the_configuration_never_reach_the_output() {
    let path = temp_file(
        "secret.toml",
        "provider = \"pgmq\"\n[connection.pgmq]\ndatabase_url = \"postgres://u:hunter2@127.0.0.1:1/x\"\n",
    );
    let out = run(tasker_mq().arg("--config").arg(&path).arg("health"));
    // pgmq may not be compiled in, or the server refuses: either way an error, never the password.
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn ctrl_c_stops_a_bench_with_a_clear_error() {
    let child = tasker_mq()
        .args([
            "bench",
            "--steps",
            "latency",
            "--latency-samples",
            "100000000",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tasker-mq");
    // Long enough for the process to start and install its handler; the run itself would take
    // minutes.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait for tasker-mq");
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "no partial report on stdout");
}

#[test]
fn migrate_is_wired_in_and_refuses_the_in_memory_provider() {
    let memory = temp_file("migrate-memory.toml", "provider = \"in_memory\"\n");
    let out = run(tasker_mq()
        .arg("migrate")
        .arg("--from")
        .arg(&memory)
        .arg("--to")
        .arg(&memory)
        .args(["--queue", "orders_queue"]));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--to names the in_memory provider"), "{err}");
}

#[test]
fn demo_runs_the_workflow_and_accounts_for_every_task() {
    let out = run(tasker_mq().args(["demo", "--tasks", "300", "--json"]));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("demo --json is JSON");
    let n = |k: &str| {
        json[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} missing: {json}"))
    };
    assert_eq!(n("tasks"), 300);
    assert_eq!(n("tasks_completed") + n("tasks_failed"), 300);
    assert_eq!(n("steps_total"), 1200);
    assert_eq!(n("messages_left"), 0);
    assert_eq!(n("steps_dead_lettered"), n("dead_letters"));
    assert_eq!(json["provider"], "in_memory");

    let bad = run(tasker_mq().args(["demo", "--permanent-failure-rate", "1.5"]));
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("--permanent-failure-rate"),
        "{}",
        stderr(&bad)
    );
}

/// GET over a plain TCP connection (no HTTP client dependency for one test).
fn http_get(address: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((code, body))
}

#[test]
fn worker_serves_health_and_metrics_then_stops_cleanly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut child = tasker_mq()
        .args([
            "worker",
            "--listen",
            &address,
            "--submit-per-sec",
            "100",
            "--run-for-secs",
            "4",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("worker starts");
    let mut health = None;
    for _ in 0..100 {
        if let Some(got) = http_get(&address, "/health") {
            health = Some(got);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, body) = health.expect("/health answers");
    let json: Value = serde_json::from_str(&body).expect("/health is JSON");
    assert!(code == 200 || code == 503, "{code}");
    assert!(
        json["pools"].as_array().is_some_and(|p| p.len() == 8),
        "{json}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (code, metrics) = http_get(&address, "/metrics").expect("/metrics answers");
    assert_eq!(code, 200);
    for name in [
        "tasker_messages_sent_total",
        "tasker_messages_received_total",
        "tasker_messages_acked_total",
        "tasker_queue_depth",
        "tasker_circuit_breaker_state",
        "tasker_messaging_operation_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let status = child.wait().expect("worker exits");
    assert!(status.success(), "worker exit status {status}");
}

/// The machine's PostgreSQL (scripts/test.sh starts it), with a password that must never print.
fn pg_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/test".into())
}

#[cfg(feature = "pgmq")]
#[test]
fn pgmq_status_and_install_name_the_database_without_its_password() {
    let url = pg_url().replacen("postgres:postgres@", "postgres:s3cretpw@", 1);
    for sub in ["status", "install"] {
        let out = run(tasker_mq().args(["pgmq", sub]).env("DATABASE_URL", &url));
        assert!(out.status.success(), "pgmq {sub}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("pgmq"), "{text}");
        assert!(
            !text.contains("s3cretpw") && !stderr(&out).contains("s3cretpw"),
            "{text}"
        );
    }
}

#[cfg(feature = "pgmq")]
#[test]
fn demo_runs_on_pgmq_with_state_in_postgres() {
    let out = run(tasker_mq()
        .args([
            "--provider",
            "pgmq",
            "demo",
            "--tasks",
            "40",
            "--concurrency",
            "8",
            "--json",
        ])
        .env("DATABASE_URL", pg_url()));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("demo --json is JSON");
    assert_eq!(json["provider"], "pgmq");
    assert_eq!(
        json["tasks_completed"].as_u64().unwrap() + json["tasks_failed"].as_u64().unwrap(),
        40
    );
    assert_eq!(json["messages_left"], 0);
}

#[cfg(feature = "rabbitmq")]
#[test]
fn demo_runs_on_rabbitmq() {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let out = run(tasker_mq()
        .args(["--provider", "rabbitmq", "demo", "--tasks", "40", "--json"])
        .env("AMQP_URL", url));
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("demo --json is JSON");
    assert_eq!(json["provider"], "rabbitmq");
    assert_eq!(
        json["tasks_completed"].as_u64().unwrap() + json["tasks_failed"].as_u64().unwrap(),
        40
    );
    assert_eq!(json["messages_left"], 0);
}
