//! `tasker-mq demo` on RabbitMQ through a full broker restart mid-run (`rabbitmqctl stop`, a
//! pause, `rabbitmq-server -detached`): the run finishes with every task accounted for,
//! nothing left in the queues, the summary shows the outage (retries, breaker openings, time
//! degraded), and it takes no longer than a fault-free run plus the outage plus a few seconds.
//! Its own test binary (see `fault_support`).

mod fault_support;

use std::time::Duration;

use fault_support::*;

const DOWN: Duration = Duration::from_secs(2);

#[test]
fn demo_on_rabbitmq_rides_through_a_broker_restart() {
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
        "rabbitmq_restart",
        "rabbitmq restart",
        || rabbit_restart(DOWN).expect("restart the broker"),
        FaultExpectation {
            breaker_opens: true,
            min_degraded_secs: 1.0,
        },
    );
}
