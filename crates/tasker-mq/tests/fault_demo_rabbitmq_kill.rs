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
    demo_through_fault(
        &plan,
        "rabbitmq_kill",
        "rabbitmq close_all_connections",
        || {
            rabbit_close_all_connections().expect("close the broker's connections");
            std::thread::sleep(Duration::from_millis(1_000));
            rabbit_close_all_connections().expect("close the broker's connections");
            Duration::ZERO
        },
        FaultExpectation {
            breaker_opens: false,
            min_degraded_secs: 0.0,
        },
    );
}
