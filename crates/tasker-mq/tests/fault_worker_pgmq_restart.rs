//! `tasker-mq worker` on PGMQ through a full PostgreSQL restart: `/health` and `/metrics` keep
//! answering throughout, `/health` goes 503 (unhealthy) while the database is down and back to
//! 200 by itself once it is up, and the worker goes on processing and stops cleanly. Its own
//! test binary (see `fault_support`).

mod fault_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use fault_support::*;

const DOWN: Duration = Duration::from_secs(4);

fn wait_for_address(stderr_path: &std::path::Path, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(stderr_path).unwrap_or_default();
        if let Some(rest) = text.split("http://").nth(1) {
            if let Some(addr) = rest.split('/').next() {
                return addr.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not start: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn health(addr: &str) -> (u16, serde_json::Value) {
    let (code, body) = http_get(addr, "/health").unwrap_or_else(|e| panic!("/health: {e}"));
    (code, serde_json::from_str(&body).unwrap_or_default())
}

#[test]
fn worker_health_goes_unhealthy_and_back_through_a_postgres_restart() {
    if !require(pg_controllable()) {
        return;
    }
    let _guard = PgGuard;
    fresh_queues("pgmq");
    let stderr_path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("worker.stderr");
    let mut child = tasker_mq()
        .args([
            "--provider",
            "pgmq",
            "worker",
            "--listen",
            "127.0.0.1:0",
            "--submit-per-sec",
            "50",
            "--run-for-secs",
            "120",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("the tasker-mq binary runs");
    let addr = wait_for_address(&stderr_path, Duration::from_secs(30));

    let deadline = Instant::now() + Duration::from_secs(20);
    while health(&addr).0 != 200 {
        assert!(Instant::now() < deadline, "never healthy before the fault");
        std::thread::sleep(Duration::from_millis(100));
    }
    let processed_before = processed(&health(&addr).1);

    let restart = std::thread::spawn(|| pg_restart(DOWN));
    let mut saw_unhealthy = None;
    let began = Instant::now();
    while !restart.is_finished() {
        let (code, _) = health(&addr);
        if code == 503 && saw_unhealthy.is_none() {
            saw_unhealthy = Some(began.elapsed());
        }
        let (metrics, _) = http_get(&addr, "/metrics").expect("/metrics answers in the outage");
        assert_eq!(metrics, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let outage = restart.join().unwrap().expect("restart PostgreSQL");
    let back_at = Instant::now();
    let mut healthy_after = None;
    while back_at.elapsed() < Duration::from_secs(30) {
        let (code, body) = health(&addr);
        if code == 200 && body["health"]["state"] == "healthy" {
            healthy_after = Some(back_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, body) = health(&addr);
    eprintln!(
        "FIGURES worker pgmq restart: outage {:.1} s, 503 after {:?}, healthy {:?} after \
         PostgreSQL was back, faults {}",
        outage.as_secs_f64(),
        saw_unhealthy,
        healthy_after,
        body["faults"]
    );
    // Stop the worker before asserting, so a failure does not leave it running.
    let stopped = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let exit = wait_exit(&mut child, Duration::from_secs(30));
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(saw_unhealthy.is_some(), "/health never said 503: {log}");
    assert!(healthy_after.is_some(), "/health did not come back: {log}");
    // The breaker opens only when calls fail fast; a database that is down makes them wait
    // for the pool's timeout instead, which the health probes' time bound catches.
    assert!(
        body["faults"]["outages"].as_u64().unwrap_or(0) >= 1,
        "{body}"
    );
    assert!(
        body["faults"]["degraded_secs"].as_f64().unwrap_or(0.0) >= 1.0,
        "{body}"
    );
    assert!(
        processed(&body) > processed_before,
        "the worker goes on processing"
    );
    assert!(stopped.is_ok_and(|s| s.success()));
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}: {log}");
    let warnings = log.matches("retrying with backoff").count();
    assert!(warnings <= 3, "{warnings} outage warnings: {log}");
}

use std::process::Command;

fn processed(health: &serde_json::Value) -> u64 {
    health["pools"]
        .as_array()
        .map(|pools| {
            pools
                .iter()
                .map(|p| p["stats"]["processed"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
