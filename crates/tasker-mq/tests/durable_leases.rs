//! `durable_leases` in the CLI: `health` shows it, and `receive` without `--ack` warns on a
//! provider whose leases end with the connection (RabbitMQ), and only there.

use std::process::{Command, Output};

fn tasker_mq() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tasker-mq"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TASKER_MQ_") {
            cmd.env_remove(key);
        }
    }
    for key in ["DATABASE_URL", "AMQP_URL", "RUST_LOG"] {
        cmd.env_remove(key);
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the tasker-mq binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const WARNING: &str = "lease of the";

#[test]
fn health_lists_durable_leases_for_in_memory() {
    let out = run(tasker_mq().arg("health"));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.contains("durable_leases"))
        .unwrap_or_else(|| panic!("no durable_leases row: {stdout}"));
    assert!(row.contains("yes"), "{row}");
    assert!(!stdout.contains("note: durable_leases no"), "{stdout}");
}

#[test]
fn receive_without_ack_does_not_warn_where_leases_are_durable() {
    let out = run(tasker_mq().args(["send", "cli_durable_mem", "x", "--create"]));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    // The in-memory provider lives per process: send and receive in one run is not possible,
    // so the receive sees an empty queue; --create makes it exist. No message, no warning.
    let out = run(tasker_mq().args(["receive", "cli_durable_mem", "--create"]));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains(WARNING),
        "{}",
        text(&out.stderr)
    );
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    use super::*;

    fn amqp() -> Command {
        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        let mut cmd = tasker_mq();
        cmd.args(["--provider", "rabbitmq"]).env("AMQP_URL", url);
        cmd
    }

    #[test]
    fn health_says_rabbitmq_has_no_durable_leases() {
        let out = run(amqp().arg("health"));
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let row = stdout
            .lines()
            .find(|l| l.contains("durable_leases"))
            .unwrap_or_else(|| panic!("no durable_leases row: {stdout}"));
        assert!(row.contains("no"), "{row}");
        assert!(stdout.contains("note: durable_leases no"), "{stdout}");
        let out = run(amqp().args(["health", "--json"]));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(json["capabilities"]["durable_leases"], false);
    }

    #[test]
    fn receive_without_ack_warns_that_the_lease_ends_with_the_command() {
        let queue = format!("cli_durable_{:08x}", rand::random::<u32>());
        let out = run(amqp().args(["send", &queue, "held", "--count", "2", "--create"]));
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));

        let out = run(amqp().args(["receive", &queue]));
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(stderr.contains("warning:"), "{stderr}");
        assert!(stderr.contains("ends when this command exits"), "{stderr}");

        let out = run(amqp().args(["receive", &queue, "--ack"]));
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        assert!(
            !text(&out.stderr).contains(WARNING),
            "{}",
            text(&out.stderr)
        );

        let _ = run(amqp().args(["queue", "delete", &queue]));
    }
}
