//! `tasker-mq demo` on PGMQ while every connection of the provider is terminated mid-run
//! (`pg_terminate_backend`): the run finishes with every task accounted for, nothing left in
//! the queues, the summary shows the retries, and it takes about as long as a fault-free run.
//! Its own test binary (see `fault_support`).

mod fault_support;

use std::time::Duration;

use fault_support::*;

#[test]
fn demo_on_pgmq_rides_through_killed_connections() {
    if !require(pg_controllable()) {
        return;
    }
    let _guard = PgGuard;
    let plan = DemoPlan {
        provider: "pgmq",
        tasks: 600,
        concurrency: 0,
    };
    fresh_queues(plan.provider);
    let baseline = baseline(&plan, "pgmq_kill");

    let run = spawn_demo(&plan, "pgmq_kill");
    let mut killed = 0;
    // Kill five times, 300 ms apart, while the run is in full swing: an idle connection killed
    // is replaced silently (sqlx checks it before use), so it takes a few rounds to catch
    // queries in flight.
    std::thread::sleep(baseline.mul_f64(0.3).max(Duration::from_millis(500)));
    for _ in 0..5 {
        killed += pg_kill_connections().expect("terminate the demo's connections");
        std::thread::sleep(Duration::from_millis(300));
    }
    let finished = run
        .finish(baseline + Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    report("pgmq connection kill", Duration::ZERO, baseline, &finished);
    eprintln!("terminated {killed} connections");
    assert!(killed > 0, "no connection of the demo was found to kill");
    check_accounted(&plan, &finished);
    let faults = faults(&finished);
    assert!(
        faults["retried_operations"].as_u64().unwrap() > 0,
        "the summary shows the fault: {faults}"
    );
    assert!(
        finished.wall <= baseline + Duration::from_secs(10),
        "{:?} against {baseline:?} without faults",
        finished.wall
    );
}
