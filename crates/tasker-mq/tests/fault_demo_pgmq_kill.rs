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
    let mut killed = 0;
    demo_through_fault(
        &plan,
        "pgmq_kill",
        "pgmq connection kill",
        || {
            // Five kills, 300 ms apart, while the run is in full swing: an idle connection
            // killed is replaced silently (sqlx checks it before use), so it takes a few rounds
            // to catch queries in flight.
            for _ in 0..5 {
                killed += pg_kill_connections().expect("terminate the demo's connections");
                std::thread::sleep(Duration::from_millis(300));
            }
            Duration::ZERO
        },
        FaultExpectation {
            breaker_opens: false,
            min_degraded_secs: 0.0,
        },
    );
    eprintln!("terminated {killed} connections");
    assert!(killed > 0, "no connection of the demo was found to kill");
}
