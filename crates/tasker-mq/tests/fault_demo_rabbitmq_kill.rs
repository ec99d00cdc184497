//! `tasker-mq demo` on RabbitMQ while the broker closes every connection mid-run
//! (`rabbitmqctl close_all_connections`): the run finishes with every task accounted for (the
//! leases that died with their connection come back and are skipped as done), nothing left in
//! the queues, the summary shows the fault, and it takes about as long as a fault-free run.
//! Its own test binary (see `fault_support`).

mod fault_support;

use std::time::Duration;

use fault_support::*;

#[test]
fn demo_on_rabbitmq_rides_through_closed_connections() {
    if !require(rabbit_controllable()) {
        return;
    }
    let _guard = BrokerGuard;
    let plan = DemoPlan {
        provider: "rabbitmq",
        tasks: 2_000,
        concurrency: 0,
    };
    fresh_queues(plan.provider);
    let baseline = baseline(&plan, "rabbitmq_kill");

    let run = spawn_demo(&plan, "rabbitmq_kill");
    for _ in 0..2 {
        std::thread::sleep(baseline.mul_f64(0.3).max(Duration::from_millis(500)));
        rabbit_close_all_connections().expect("close the broker's connections");
    }
    let finished = run
        .finish(baseline + Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    report(
        "rabbitmq close_all_connections",
        Duration::ZERO,
        baseline,
        &finished,
    );
    check_accounted(&plan, &finished);
    let faults = faults(&finished);
    assert!(
        faults["retried_operations"].as_u64().unwrap() > 0,
        "{faults}"
    );
    assert!(
        finished.wall <= baseline + Duration::from_secs(10),
        "{:?} against {baseline:?} without faults",
        finished.wall
    );
}
