//! `tasker-mq demo` on PGMQ through a full PostgreSQL restart mid-run (stopped for a few
//! seconds): the run finishes with every task accounted for, nothing left in the queues, the
//! summary shows the outage (retries, breaker openings, time degraded), and it takes no longer
//! than a fault-free run plus the outage plus a few seconds. Its own test binary (see
//! `fault_support`).

mod fault_support;

use std::time::Duration;

use fault_support::*;

const DOWN: Duration = Duration::from_secs(4);

#[test]
fn demo_on_pgmq_rides_through_a_postgres_restart() {
    if !require(pg_controllable()) {
        return;
    }
    let _guard = PgGuard;
    let plan = DemoPlan {
        provider: "pgmq",
        tasks: 600,
        concurrency: 0,
    };
    demo_through_fault(
        &plan,
        "pgmq_restart",
        "pgmq restart",
        || pg_restart(DOWN).expect("restart PostgreSQL"),
        FaultExpectation {
            breaker_opens: true,
            min_degraded_secs: DOWN.as_secs_f64() * 0.5,
        },
    );
}
