//! Shared by the fault tests: run `tasker-mq demo` / `worker` as a user would while the test
//! kills connections or restarts PostgreSQL or RabbitMQ, then check the run accounted for
//! every task.
//!
//! Each fault test is its own test binary (cargo runs test binaries one after another), so no
//! other test of this workspace runs while a service is down. The services are always started
//! again, also when a test fails (guards). Without the tools to control a service
//! (`pg_ctlcluster`, `psql`, `rabbitmqctl`), a test is skipped with the reason, or fails under
//! CI (`CI=true`). Set `TASKER_MQ_FAULT_BIN` to run another build of the binary (e.g. the
//! release build, for figures).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use tasker_messaging::NamespaceQueueRouter;
use tasker_orchestration::workflow::demo::plan_failures;
use tasker_orchestration::workflow::{DemoConfig, WorkflowQueues, ORDER_FULFILLMENT};

pub const DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/test";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const SEED: u64 = 7;

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips (returns false) or, under CI, fails.
pub fn require(check: Result<(), String>) -> bool {
    match check {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("cannot run this fault test under CI: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: {why}");
            false
        }
    }
}

fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} cannot run: {e}"))
}

/// Runs a command that starts a server, with every inherited descriptor above stderr closed:
/// the server outlives the test, and must not keep the test's `flock` on
/// /tmp/tasker-services.lock (the descriptor `flock -x ... cargo test` passes down), which
/// would hold the lock for as long as the server runs and block every other test.
fn run_server_start(program: &str, args: &[&str]) -> Result<Output, String> {
    let close_and_exec = r#"for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done 2>/dev/null; exec "$@""#;
    Command::new("bash")
        .arg("-c")
        .arg(close_and_exec)
        .arg("bash")
        .arg(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} cannot run: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "{} {}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn ok(program: &str, args: &[&str]) -> Result<String, String> {
    let out = run(program, args)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {args:?} failed: {}", describe(&out)))
    }
}

/// The binary, with the ambient provider settings removed.
pub fn tasker_mq() -> Command {
    let bin = std::env::var("TASKER_MQ_FAULT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_tasker-mq")));
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars() {
        if key.starts_with("TASKER_MQ_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("DATABASE_URL", DATABASE_URL)
        .env("AMQP_URL", AMQP_URL)
        .env("RUST_LOG", "warn");
    cmd
}

// ---------- PostgreSQL ----------

pub fn pg_version() -> Result<String, String> {
    let dirs = std::fs::read_dir("/etc/postgresql").map_err(|e| format!("no cluster: {e}"))?;
    dirs.filter_map(|d| d.ok())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| "no cluster in /etc/postgresql".to_owned())
}

fn psql(sql: &str) -> Result<String, String> {
    ok(
        "psql",
        &[DATABASE_URL, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
    )
}

pub fn pg_controllable() -> Result<(), String> {
    let version = pg_version()?;
    ok("pg_ctlcluster", &[&version, "main", "status"])?;
    psql("SELECT 1").map(|_| ())
}

fn pg_ctl(action: &str) -> Result<(), String> {
    let version = pg_version()?;
    let args = ["--skip-systemctl-redirect", &version, "main", action];
    let out = run_server_start("pg_ctlcluster", &args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("pg_ctlcluster {args:?} failed: {}", describe(&out)))
    }
}

fn pg_wait_up(within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        match psql("SELECT 1") {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Terminates the provider's connections (`application_name` tasker_messaging); returns how
/// many.
pub fn pg_kill_connections() -> Result<usize, String> {
    let out = psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'tasker_messaging' AND datname = current_database()",
    )?;
    out.trim()
        .parse()
        .map_err(|e| format!("unexpected psql output {out:?}: {e}"))
}

/// Stops PostgreSQL, waits `down`, starts it; returns how long it was unreachable.
pub fn pg_restart(down: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    pg_ctl("stop")?;
    std::thread::sleep(down);
    pg_ctl("start")?;
    pg_wait_up(Duration::from_secs(60))?;
    Ok(started.elapsed())
}

/// Leaves PostgreSQL running whatever happens to the test.
pub struct PgGuard;

impl Drop for PgGuard {
    fn drop(&mut self) {
        if psql("SELECT 1").is_ok() {
            return;
        }
        eprintln!("pg guard: PostgreSQL is down; starting it again");
        if let Err(e) = pg_ctl("start").and_then(|_| pg_wait_up(Duration::from_secs(60))) {
            eprintln!("pg guard: could not start PostgreSQL: {e}");
        }
    }
}

// ---------- RabbitMQ ----------

fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    ok("rabbitmqctl", args)
}

pub fn rabbit_controllable() -> Result<(), String> {
    rabbitmqctl(&["-q", "status"]).map(|_| ())
}

fn rabbit_await(within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        match rabbitmqctl(&["-q", "await_startup", "--timeout", "30"]) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            // Fails at once while the node is not registered yet.
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn rabbit_start() -> Result<(), String> {
    let out = run_server_start("rabbitmq-server", &["-detached"])?;
    if !out.status.success() {
        // Already running is fine; await tells.
        eprintln!("rabbitmq-server -detached: {}", describe(&out));
    }
    rabbit_await(Duration::from_secs(90))
}

/// Stops the whole node, waits `down`, starts it; returns how long it was unreachable.
pub fn rabbit_restart(down: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    rabbitmqctl(&["-q", "stop"])?;
    std::thread::sleep(down);
    rabbit_start()?;
    Ok(started.elapsed())
}

pub fn rabbit_close_all_connections() -> Result<(), String> {
    rabbitmqctl(&["-q", "close_all_connections", "fault test"]).map(|_| ())
}

/// Leaves the broker running whatever happens to the test.
pub struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        if rabbit_controllable().is_ok() {
            return;
        }
        eprintln!("broker guard: the node is down; starting it again");
        if let Err(e) = rabbit_start() {
            eprintln!("broker guard: could not start the node: {e}");
        }
    }
}

// ---------- the demo ----------

/// Parameters of a demo run under faults.
#[derive(Clone, Debug)]
pub struct DemoPlan {
    pub provider: &'static str,
    pub tasks: u64,
    pub concurrency: u64,
}

/// What the seed's failure plan says the run must end with.
#[derive(Debug, PartialEq)]
pub struct Expected {
    pub tasks_failed: u64,
    pub retries: u64,
}

/// Replays the demo's failure planning for `tasks` tasks with the CLI's default rates.
pub fn expected(tasks: u64) -> Expected {
    let config = DemoConfig::default();
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut out = Expected {
        tasks_failed: 0,
        retries: 0,
    };
    for _ in 0..tasks {
        let plans = plan_failures(&mut rng, ORDER_FULFILLMENT.steps.len(), &config);
        for plan in plans {
            if plan.permanent {
                out.tasks_failed += 1;
                break;
            }
            out.retries += u64::from(plan.transient);
        }
    }
    out
}

/// Deletes the demo's queues and dead-letter queues, so they are created with the current
/// options (a queue keeps the options of its first creation).
pub fn fresh_queues(provider: &str) {
    let router =
        NamespaceQueueRouter::new("demo_{namespace}_queue", "_dlq").expect("the demo's pattern");
    let queues = WorkflowQueues { router };
    for queue in queues.all(&ORDER_FULFILLMENT).expect("queue names") {
        for name in [queue.to_string(), format!("{queue}_dlq")] {
            let _ = tasker_mq()
                .args(["--provider", provider, "queue", "delete", &name])
                .output();
        }
    }
}

pub struct DemoRun {
    child: Child,
    stderr_path: PathBuf,
    pub started: Instant,
}

pub fn spawn_demo(plan: &DemoPlan, tag: &str) -> DemoRun {
    let stderr_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}.stderr"));
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let child = tasker_mq()
        .args([
            "--provider",
            plan.provider,
            "demo",
            "--tasks",
            &plan.tasks.to_string(),
            "--concurrency",
            &plan.concurrency.to_string(),
            "--seed",
            &SEED.to_string(),
            "--timeout-secs",
            "120",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("the tasker-mq binary runs");
    DemoRun {
        child,
        stderr_path,
        started: Instant::now(),
    }
}

/// The run's end: summary, its logs, wall time.
pub struct Finished {
    pub summary: Value,
    pub stderr: String,
    pub wall: Duration,
}

impl DemoRun {
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn finish(mut self, within: Duration) -> Result<Finished, String> {
        let deadline = self.started + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "the demo did not finish within {within:?}; stderr: {}",
                    std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let wall = self.started.elapsed();
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        if !status.success() {
            return Err(format!("the demo failed ({status}): {stderr}"));
        }
        let summary = serde_json::from_str(&stdout)
            .map_err(|e| format!("the summary is not JSON ({e}): {stdout}; stderr: {stderr}"))?;
        Ok(Finished {
            summary,
            stderr,
            wall,
        })
    }
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing: {v}"))
}

/// Every task accounted for exactly as the failure plan says, nothing left in the queues, and
/// at most a warning per state change (no log flood).
pub fn check_accounted(plan: &DemoPlan, run: &Finished) {
    let s = &run.summary;
    let want = expected(plan.tasks);
    assert_eq!(u(s, "tasks"), plan.tasks, "{s}");
    assert_eq!(
        u(s, "tasks_completed") + u(s, "tasks_failed"),
        plan.tasks,
        "every task final: {s}"
    );
    assert_eq!(
        u(s, "tasks_failed"),
        want.tasks_failed,
        "failed exactly where permanent failures were injected: {s}"
    );
    assert_eq!(u(s, "steps_dead_lettered"), want.tasks_failed, "{s}");
    // Dead-lettering is at least once: on RabbitMQ a connection that dies between publishing
    // to the dead-letter queue and acking brings the message back, and it is dead-lettered
    // again (a duplicate with the same message id; the step itself is failed once, above).
    let dead = u(s, "dead_letters");
    assert!(
        (want.tasks_failed..=want.tasks_failed + 3).contains(&dead),
        "dead-lettered where failures were injected ({} steps): {s}",
        want.tasks_failed
    );
    assert_eq!(
        u(s, "retries"),
        want.retries,
        "retries exactly as injected (an outage is not an attempt): {s}"
    );
    assert_eq!(u(s, "messages_left"), 0, "{s}");
    let warnings = run.stderr.matches("retrying with backoff").count() as u64;
    let outages = u(&s["faults"], "outages");
    assert!(
        warnings <= outages,
        "{warnings} outage warnings for {outages} outages: {}",
        run.stderr
    );
}

pub fn faults(run: &Finished) -> &Value {
    &run.summary["faults"]
}

pub fn report(label: &str, outage: Duration, baseline: Duration, run: &Finished) {
    eprintln!(
        "FIGURES {label}: outage {:.1} s, run {:.2} s (wall {:.2} s; fault-free {:.2} s), faults {}",
        outage.as_secs_f64(),
        run.summary["elapsed_secs"].as_f64().unwrap_or(0.0),
        run.wall.as_secs_f64(),
        baseline.as_secs_f64(),
        run.summary["faults"]
    );
}

/// A fault-free run of the same plan: the reference for "no longer than the outage plus a few
/// seconds".
pub fn baseline(plan: &DemoPlan, tag: &str) -> Duration {
    let run = spawn_demo(plan, &format!("{tag}_baseline"))
        .finish(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("the fault-free run: {e}"));
    check_accounted(plan, &run);
    run.wall
}

/// What a demo run under a fault must show beyond "every task accounted for" and "the summary
/// counts retries".
pub struct FaultExpectation {
    /// The outage was long enough that the breaker must have opened.
    pub breaker_opens: bool,
    /// Least time degraded the summary must report, in seconds.
    pub min_degraded_secs: f64,
}

/// The shape of every demo fault test: a fault-free reference run of `plan`, then the same run
/// with `inject` called 30% into it (it returns the outage it caused, zero for a kill); the run
/// must account for every task, show the fault in its summary, and take no longer than the
/// reference plus the outage plus 10 s.
pub fn demo_through_fault(
    plan: &DemoPlan,
    tag: &str,
    label: &str,
    inject: impl FnOnce() -> Duration,
    expect: FaultExpectation,
) -> Finished {
    fresh_queues(plan.provider);
    let baseline = baseline(plan, tag);
    let run = spawn_demo(plan, tag);
    std::thread::sleep(baseline.mul_f64(0.3).max(Duration::from_millis(500)));
    let outage = inject();
    let finished = run
        .finish(baseline + outage + Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    report(label, outage, baseline, &finished);
    check_accounted(plan, &finished);
    let faults = faults(&finished);
    assert!(
        faults["retried_operations"].as_u64().unwrap() > 0,
        "the summary shows the fault: {faults}"
    );
    if expect.breaker_opens {
        assert!(
            faults["breaker_openings"].as_u64().unwrap() >= 1,
            "{faults}"
        );
    }
    let degraded = faults["degraded_secs"].as_f64().unwrap();
    assert!(
        degraded >= expect.min_degraded_secs && degraded <= outage.as_secs_f64() + 10.0,
        "time degraded {degraded:.1} s for an outage of {outage:?}"
    );
    assert!(
        finished.wall <= baseline + outage + Duration::from_secs(10),
        "{:?} against {baseline:?} without faults and an outage of {outage:?}",
        finished.wall
    );
    finished
}

// ---------- HTTP ----------

/// `GET path` on `addr`: the status code and body, or why not.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
